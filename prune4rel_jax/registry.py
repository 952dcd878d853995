"""Name → implementation registries, so configs select datasets, models, learners and methods by string."""

from collections.abc import Mapping

from prune4rel_jax.errors import UserError


class Registry:
  """A named table of implementations, built from one `name → implementation` mapping in the package that defines
  them; unknown names fail with the list of known ones."""

  def __init__(self, kind: str, entries: Mapping[str, object]):
    self.kind = kind
    self._entries = dict(entries)

  def add(self, name: str, obj: object) -> None:
    """One more entry from outside the package (a test's dataset or method)."""
    if name in self._entries:
      raise ValueError(f"{self.kind} {name!r} is registered twice")
    self._entries[name] = obj

  def get(self, name: str):
    if name not in self._entries:
      raise UserError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
    return self._entries[name]

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries
