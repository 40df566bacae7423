"""Why a DL/T 645 meter refused a 1CH command: its ERR bits, explained by status word 3 where that is known (pure).

A meter refuses a trip while in 保电 (power protection) with ERR bit 0, "other error" (protocols.md §1.6 and §1.9;
a more specific grid-extension code is [UNVERIFIED] on the wire). The ERR byte alone cannot tell an operator why.
Status word 3 (04000503) bit 12 can, so after such a refusal the driver reads the word once, and the rules below
rename the "other error".

A rule is data: the commands it explains, the status-word bits that must all be set, and the reason that replaces
"other error". Only rules with evidence are listed. One firmware's relay state tables (float12/WorkProjectsSVN
``Relay_Remote.c``, ``TAB_RelayReturnStatus*``; protocols.md §1.9) refuse a trip in the two 保电 states
(``R_ERR_OFF_PROTECT``). Because of the relay state they refuse nothing else this driver sends: close-allowed,
direct close, 保电 and its release are always accepted (alarms are not in the tables). A trip on an open relay,
or a close on a closed one, is accepted there too. So "relay already in the wanted state" explains no refusal,
and no rule says so. Commands other than a trip get no status read.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.dlt645.constants import ErrorBits, RemoteCommand, StatusWord3, error_reasons

__all__ = [
    "PROTECT_STATE",
    "STATUS_EXPLANATIONS",
    "StatusExplanation",
    "explain_refusal",
    "status_word_may_explain",
]

PROTECT_STATE = "meter in protect state (保电)"


@dataclass(frozen=True, slots=True)
class StatusExplanation:
    """When ``command`` is refused with "other error" and every bit of ``when_set`` is set, say ``reason``."""

    commands: frozenset[RemoteCommand]
    when_set: StatusWord3
    reason: str


STATUS_EXPLANATIONS: tuple[StatusExplanation, ...] = (
    # 跳闸失败(保电): trip refused in 保电 (protocols.md §1.9, R_ERR_OFF_PROTECT)
    StatusExplanation(frozenset({RemoteCommand.TRIP}), StatusWord3.PROTECTED, PROTECT_STATE),
)


def status_word_may_explain(command: int, err: int) -> bool:
    """Whether reading status word 3 could explain this refusal: ERR bit 0 set and a rule for the command."""
    return bool(err & ErrorBits.OTHER) and any(command in rule.commands for rule in STATUS_EXPLANATIONS)


def explain_refusal(command: int, err: int, status_word_3: int | None = None) -> tuple[str, ...]:
    """The named reasons of a refused 1CH ``command``, in ERR bit order.

    These are the ERR bits' reasons (``error_reasons``), with "other error" (bit 0) replaced by the reason of the
    first rule that the status word matches. With ``status_word_3=None`` (not read, or the read failed), the bits
    are returned unchanged.
    """
    reasons = error_reasons(err)
    if status_word_3 is None or not err & ErrorBits.OTHER:
        return reasons
    for rule in STATUS_EXPLANATIONS:
        if command in rule.commands and status_word_3 & rule.when_set == rule.when_set:
            return (rule.reason, *reasons[1:])  # bit 0 comes first
    return reasons
