"""What every settings section shares: unknown keys are errors, and settings never change once read."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["_Strict"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
