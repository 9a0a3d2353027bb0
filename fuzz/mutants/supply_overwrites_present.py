"""A supply overwrites pages that are already present with the supplied bytes (instead of
keeping them and dropping the supplied ones): a write that raced with the supply of its page
is lost, and so is every dirty page a prefetching pager supplies again.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='supply_overwrites_present',
    target='vmo.cow_pages:CowPages.supply_pages_locked',
    old=('            if self.page_list.get(off) != EMPTY or off >= self.supply_zero_offset:\n'
         '                if v > 0:\n'
         '                    rejected.append(v)\n'),
    new=('            present = self.page_list.get(off)\n'
         '            if present > 0 and v > 0 and off < self.supply_zero_offset:\n'
         '                pmm.copy_frame(present, v)  # MUTANT: the present page is overwritten\n'
         '            if present != EMPTY or off >= self.supply_zero_offset:\n'
         '                if v > 0:\n'
         '                    rejected.append(v)\n'),
    description=__doc__.strip(),
    machine='vmo.testing.pager_cow:PagerCowMachine',
)
