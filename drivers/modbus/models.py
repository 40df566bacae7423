"""Meter models as data: ``config/meters/<vendor>-<model>.yaml`` files, strictly validated.

The format is documented in docs/meter-models.md. Every error names the file and the key path.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drivers.modbus.quantities import QUANTITIES, RATE_QUANTITIES, unit_factor
from drivers.modbus.registers import (
    BIT_TABLES,
    Encoding,
    ReadPlan,
    Table,
    WordOrder,
    length,
    plan_reads,
)

__all__ = [
    "Defaults",
    "MeterModel",
    "ModelFileError",
    "Product",
    "RELAY_STATE",
    "RegisterSpec",
    "RelayCommandSpec",
    "RelaySpec",
    "RelayStateSpec",
    "TAMPER",
    "TamperSpec",
    "load_model",
    "load_models",
    "parse_model",
    "parse_model_text",
]

# Key of the relay state register in MeterModel.read_plan (quantity names never contain a dot).
RELAY_STATE = "relay.state"
# Key of the tamper register in MeterModel.read_plan.
TAMPER = "tamper.flags"
# Files of these protocols may share config/meters/ and are skipped by load_models.
OTHER_PROTOCOLS = frozenset({"dlt645"})

Address = Annotated[int, Field(strict=True, ge=0, le=0xFFFF)]
Word = Annotated[int, Field(strict=True, ge=0, le=0xFFFF)]


class ModelFileError(ValueError):
    """A meter model file is unreadable or invalid; the message names the file and the key path."""

    def __init__(self, path: str | Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = str(path)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Product(_Strict):
    """A product this model file describes."""

    brand: str
    description: str = ""


class Defaults(_Strict):
    """Connection defaults; a site's bus or meter config may override them."""

    unit_id: Annotated[int, Field(strict=True, ge=1, le=247)] = 1
    baudrate: Annotated[int, Field(strict=True, gt=0)] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    max_registers_per_request: Annotated[int, Field(strict=True, ge=1, le=125)] = 125


class RegisterSpec(_Strict):
    """Where one quantity lives and how it is encoded: raw x ``scale`` is a value in ``unit``."""

    address: Address
    table: Table
    encoding: Encoding
    word_order: WordOrder = "big"
    scale: Decimal = Decimal(1)
    unit: str

    @property
    def length(self) -> int:
        return length(self.encoding)

    @model_validator(mode="after")
    def _check(self) -> RegisterSpec:
        if (self.encoding == "bool") != (self.table in BIT_TABLES):
            raise ValueError(
                f"encoding {self.encoding!r} does not fit table {self.table!r} "
                "(coil and discrete take 'bool'; holding and input take a register encoding)"
            )
        if self.address + self.length - 1 > 0xFFFF:
            raise ValueError(f"{self.encoding} at {self.address:#06x} runs past the end of the address space")
        if not self.scale.is_finite() or self.scale == 0:
            raise ValueError(f"scale must be a finite non-zero number, not {self.scale}")
        return self


_COMMAND_FUNCTIONS: dict[str, tuple[int, ...]] = {"coil": (5, 15), "holding": (6, 16)}


class RelayCommandSpec(_Strict):
    """The coil or holding register that commands the relay, and the values that mean open / close."""

    table: Literal["coil", "holding"]
    address: Address
    function: Literal[5, 6, 15, 16] | None = None  # default: 5 for a coil, 6 for a holding register
    open: Word
    close: Word

    @property
    def write_function(self) -> int:
        return self.function if self.function is not None else _COMMAND_FUNCTIONS[self.table][0]

    @model_validator(mode="after")
    def _check(self) -> RelayCommandSpec:
        if self.write_function not in _COMMAND_FUNCTIONS[self.table]:
            raise ValueError(f"function {self.write_function} cannot write a {self.table}")
        _check_values(self.table, self.open, self.close, "close")
        return self


class RelayStateSpec(_Strict):
    """The coil, discrete input or register that reports the actual contact state."""

    table: Table
    address: Address
    open: Word
    closed: Word

    @model_validator(mode="after")
    def _check(self) -> RelayStateSpec:
        _check_values(self.table, self.open, self.closed, "closed")
        return self


def _check_values(table: str, open_value: int, other: int, other_name: str) -> None:
    if open_value == other:
        raise ValueError(f"'open' and {other_name!r} must differ")
    if table in BIT_TABLES and {open_value, other} != {0, 1}:
        raise ValueError(f"a {table} holds 0 or 1")


class RelaySpec(_Strict):
    """The meter's relay (or a relay module's): command, read-back, and how long the contact takes to trip."""

    command: RelayCommandSpec
    state: RelayStateSpec
    trip_delay: Annotated[float, Field(ge=0, le=3600)] = 0.0


FlagName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)]
Bit = Annotated[int, Field(strict=True, ge=0, le=15)]


class TamperSpec(_Strict):
    """A 16-bit register whose bits are the meter's tamper flags: flag name -> bit number (0 = least significant).

    A set bit raises its flag; the other bits of the register mean nothing to the gateway.
    """

    table: Literal["input", "holding"]
    address: Address
    flags: dict[FlagName, Bit]

    @model_validator(mode="after")
    def _check(self) -> TamperSpec:
        if not self.flags:
            raise ValueError("flags: name at least one flag")
        bits = list(self.flags.values())
        if len(set(bits)) != len(bits):
            raise ValueError("flags: two flags share a bit")
        return self

    @cached_property
    def masks(self) -> tuple[tuple[int, str], ...]:
        """(bit mask, flag name) pairs, sorted by name: a reading's flags come out sorted."""
        return tuple((1 << bit, name) for name, bit in sorted(self.flags.items()))

    def decode(self, word: int) -> tuple[str, ...]:
        """The flags a register value raises, sorted by name."""
        return tuple(name for mask, name in self.masks if word & mask)

    def encode(self, flags: Collection[str]) -> int:
        """The register value that raises these flags (unknown names are ignored): for simulators."""
        return sum(1 << bit for name, bit in self.flags.items() if name in flags)


class MeterModel(_Strict):
    """One meter model file."""

    model: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")]
    covers: tuple[str, ...] = ()
    products: tuple[Product, ...] = ()
    protocol: Literal["modbus"]
    defaults: Defaults = Defaults()
    registers: dict[str, RegisterSpec] = Field(default_factory=dict)
    relay: RelaySpec | None = None
    tamper: TamperSpec | None = None

    def __hash__(self) -> int:  # the id is unique among loaded models; registers (a dict) are not hashable
        return hash((MeterModel, self.model))

    @model_validator(mode="after")
    def _check_layout(self) -> MeterModel:
        if self.model in self.covers or len(set(self.covers)) != len(self.covers):
            raise ValueError("covers: repeats a name or the model id")
        limit = self.defaults.max_registers_per_request
        for name, spec in self.registers.items():
            if name not in QUANTITIES:
                raise ValueError(f"registers.{name}: unknown quantity (known: {', '.join(QUANTITIES)})")
            try:
                unit_factor(name, spec.unit)
            except KeyError as exc:
                raise ValueError(f"registers.{name}.unit: {exc.args[0]}") from None
            if spec.table not in BIT_TABLES and spec.length > limit:
                raise ValueError(
                    f"registers.{name}: {spec.encoding} needs {spec.length} registers per request, "
                    f"defaults.max_registers_per_request is {limit}"
                )
        rates = [name for name in RATE_QUANTITIES if name in self.registers]
        if rates != list(RATE_QUANTITIES[: len(rates)]):
            raise ValueError("registers: rate registers must be energy_import_rate1 .. rateN without gaps")
        _check_overlaps(self._spans())
        return self

    def _spans(self) -> list[tuple[str, str, int, int]]:
        spans: list[tuple[str, str, int, int]] = [
            (f"registers.{n}", s.table, s.address, s.length) for n, s in self.registers.items()
        ]
        if self.relay is not None:
            command, state = self.relay.command, self.relay.state
            spans.append(("relay.command", command.table, command.address, 1))
            if (state.table, state.address) != (command.table, command.address):
                spans.append(("relay.state", state.table, state.address, 1))
        if self.tamper is not None:
            spans.append(("tamper", self.tamper.table, self.tamper.address, 1))
        return spans

    @property
    def rates(self) -> int:
        """How many per-rate energy registers (tariff rates 1..N) the model has."""
        return sum(1 for name in RATE_QUANTITIES if name in self.registers)

    @cached_property
    def read_plan(self) -> ReadPlan[str]:
        """Requests that read every quantity, the relay state and the tamper register, merged as far as the
        model allows."""
        items = {name: (s.table, s.address, s.length) for name, s in self.registers.items()}
        if self.relay is not None:
            items[RELAY_STATE] = (self.relay.state.table, self.relay.state.address, 1)
        if self.tamper is not None:
            items[TAMPER] = (self.tamper.table, self.tamper.address, 1)
        return plan_reads(items, max_registers=self.defaults.max_registers_per_request)


def _check_overlaps(spans: list[tuple[str, str, int, int]]) -> None:
    reach: dict[str, tuple[str, int]] = {}  # per table: the span that reaches furthest so far, and its end
    for name, table, address, count in sorted(spans, key=lambda s: (s[1], s[2])):
        previous, end = reach.get(table, ("", -1))
        if address < end:
            raise ValueError(f"{previous} and {name} overlap in the {table} table at {address:#06x}")
        reach[table] = (name, address + count)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, path: str | Path) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ModelFileError(path, f"invalid YAML: {exc}") from exc


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelFileError(path, f"cannot read: {exc.strerror or exc}") from exc
    return _parse_yaml(text, path)


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        if error["type"] in (
            "literal_error",
            "string_pattern_mismatch",
            "int_type",
            "greater_than_equal",
            "less_than_equal",
        ) and not isinstance(value, Mapping | list):
            message += f" (got {value!r})"
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)


def parse_model(data: Any, *, path: str | Path = "<data>") -> MeterModel:
    """Validate already-parsed YAML data; errors name ``path``."""
    if not isinstance(data, Mapping):
        raise ModelFileError(path, "a meter model file must be a mapping of keys")
    try:
        return MeterModel.model_validate(data)
    except ValidationError as exc:
        raise ModelFileError(path, _describe(exc)) from None


def parse_model_text(text: str, *, path: str | Path = "<text>") -> MeterModel:
    """Parse and validate the YAML text of a model file; errors name ``path``."""
    return parse_model(_parse_yaml(text, path), path=path)


def load_model(path: str | Path) -> MeterModel:
    """Load and validate one meter model file."""
    path = Path(path)
    return parse_model(_read_yaml(path), path=path)


def load_models(directory: str | Path) -> dict[str, MeterModel]:
    """Load every ``*.yaml`` model file of a directory, keyed by model id and by each alias in ``covers``.

    Files whose name starts with ``_`` and files of another protocol (DL/T 645) are skipped. An id or alias
    defined twice is an error naming both files.
    """
    models: dict[str, MeterModel] = {}
    origin: dict[str, Path] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        data = _read_yaml(path)
        if isinstance(data, Mapping) and data.get("protocol") in OTHER_PROTOCOLS:
            continue
        model = parse_model(data, path=path)
        for name in (model.model, *model.covers):
            if name in models:
                raise ModelFileError(path, f"model id or alias {name!r} is already defined in {origin[name]}")
            models[name], origin[name] = model, path
    return models
