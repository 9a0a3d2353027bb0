"""The catalogue of mutants: deliberately broken variants of the core's rules.

One module per mutant, each with a ``MUTANT`` (a `vmo.testing.mutation.Mutant`: one exact
textual replacement in one function of the core, applied by monkeypatching, never on disk).
``vmo fuzz --mutants`` runs a campaign against each and expects every one to be killed; see
docs/fuzzing.md. Add a mutant by dropping a module here; when the core changes and a mutant's
target text disappears, it fails as "stale": update its text.
"""

from vmo.testing.mutation import Mutant, StaleMutant

__all__ = ["Mutant", "StaleMutant"]
