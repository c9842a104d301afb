"""Base class for every config: a pydantic model that validates itself and rejects unknown fields."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Config(BaseModel):
    """A method's settings. Unknown fields are errors (a typo must never be silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
