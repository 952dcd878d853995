"""Name → implementation registries, so configs select datasets, models, learners and methods by string."""

from typing import Callable, TypeVar

from prune4rel_jax.errors import UserError

T = TypeVar("T")


class Registry:
  """A named table of implementations; unknown names fail with the list of known ones."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, object] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def add(obj: T) -> T:
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._entries[name] = obj
      return obj
    return add

  def get(self, name: str):
    if name not in self._entries:
      raise UserError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
    return self._entries[name]

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries
