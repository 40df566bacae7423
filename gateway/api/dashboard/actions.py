"""The operator's actions from the dashboard: each one a confirmation page (what will happen, and for relay
commands whether the guardrails allow it now) and a post with a mandatory reason.

A post needs the session's CSRF token and a role that may do the action (``ACTION_ROLES``), and goes through the
same request models and the same code as the API's routes, so the dashboard can do nothing the API would refuse.
A refused post changes nothing and shows the confirmation page again with the reason.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from gateway.api.alarm_schemas import AlarmAction
from gateway.api.dashboard.web import PREFIX, Page, may, page_of, parse_form, redirect, render, same_origin
from gateway.api.fleet_schemas import MeterSwap
from gateway.api.problems import Problem, kind_of
from gateway.api.routes import accounts as account_routes
from gateway.api.routes import fleet as fleet_routes
from gateway.api.routes import meters as meter_routes
from gateway.api.schemas import EmergencyCreditCreate, HoldUpdate, ProtectionUpdate, QuarantineAction, \
    RelayCommandCreate
from gateway.service.operator import manual_command

router = APIRouter(prefix=PREFIX + "/act", include_in_schema=False)


@dataclass(frozen=True)
class Action:
    target: str  # meter | account | alarm
    title: str  # the button's text
    what: str  # what will happen (a text with %(id)s)
    fields: tuple[str, ...] = ()  # the form's fields besides the reason


ACTIONS: dict[str, Action] = {
    "disconnect": Action("meter", "Disconnect",
                         "Open the supply of meter %(id)s (relay open), confirmed by reading the relay back."),
    "reconnect": Action("meter", "Reconnect",
                        "Close the supply of meter %(id)s (relay closed), confirmed by reading the relay back."),
    "emergency-credit": Action("account", "Emergency credit",
                               "Grant emergency credit to account %(id)s (repaid from the next payment).",
                               ("amount",)),
    "hold": Action("account", "Hold disconnects", "No automatic disconnect of account %(id)s before the time given.",
                   ("until",)),
    "release-hold": Action("account", "Release hold", "Automatic disconnects of account %(id)s are allowed again."),
    "protect": Action("account", "Protect", "Account %(id)s is never disconnected automatically."),
    "unprotect": Action("account", "Release protection", "Account %(id)s may be disconnected automatically again."),
    "accept": Action("meter", "Accept reading", "Bill the quarantined reading of meter %(id)s.", ("energy_wh",)),
    "rebase": Action("meter", "Re-base meter",
                     "Start meter %(id)s afresh from a new baseline (nothing billed across the jump).",
                     ("energy_wh",)),
    "swap": Action("meter", "Replace meter",
                   "Replace meter %(id)s by a new meter on the same account, billing across the swap.",
                   ("new_id", "unit_id", "address", "final_wh", "initial_wh")),
    "acknowledge": Action("alarm", "Acknowledge", "Acknowledge alarm %(id)s: it stays until resolved."),
    "resolve": Action("alarm", "Resolve", "Resolve alarm %(id)s by hand."),
}


def back_to(action: Action, target: str) -> str:
    return {"meter": f"{PREFIX}/meters/{target}", "account": f"{PREFIX}/accounts/{target}",
            "alarm": f"{PREFIX}/alarms"}[action.target]


class Refused(Exception):
    """The action is not done; the text says why."""


def _json(model: Any, data: dict[str, Any]) -> Any:
    """A request model validated as the API validates a JSON body."""
    return model.model_validate_json(json.dumps(data))


def _whole(form: dict[str, str], name: str) -> int | None:
    value = form.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit() or len(value) > 15:
        raise Refused(f"{name}: a whole number is needed")
    return int(value)


def _until(page: Page, value: str) -> str:
    """A ``datetime-local`` value in the site's time zone, as UTC ISO."""
    try:
        local = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise Refused("until: a date and time is needed") from None
    if local.tzinfo is None:
        local = local.replace(tzinfo=page.locale.tz)
    return local.astimezone(dt.UTC).isoformat()


async def _perform(page: Page, name: str, target: str, form: dict[str, str]) -> str:
    """Do the action; returns what to tell the operator."""
    service, caller, reason = page.service, page.caller, form.get("reason", "").strip()
    if name in ("disconnect", "reconnect"):
        body = _json(RelayCommandCreate, {"reason": reason})
        outcome = await manual_command(service, target, "open" if name == "disconnect" else "close",
                                       role=caller.role, actor=caller.name, operator=caller.name, reason=body.reason)
        if not outcome.allowed:
            raise Problem("not-allowed", outcome.reason)
        if outcome.command is None:
            return outcome.reason
        return page.locale.text("Command %(id)s queued.", id=outcome.command.id)
    if name == "emergency-credit":
        amount = form.get("amount", "").strip() or None
        await account_routes.emergency_credit(target, _json(EmergencyCreditCreate, {"amount": amount,
                                                                                    "reason": reason}),
                                              service, caller)
    elif name in ("hold", "release-hold"):
        until = _until(page, form.get("until", "")) if name == "hold" else None
        await account_routes.hold(target, _json(HoldUpdate, {"until": until, "reason": reason}), service, caller)
    elif name in ("protect", "unprotect"):
        await account_routes.protection(target, _json(ProtectionUpdate, {"protected": name == "protect",
                                                                        "reason": reason}), service, caller)
    elif name in ("accept", "rebase"):
        body = _json(QuarantineAction, {"reason": reason, "energy_wh": _whole(form, "energy_wh")})
        await meter_routes.resolve_quarantine(target, name, body, service, caller)  # type: ignore[arg-type]
    elif name == "swap":
        old = await service.views.meter(target)
        new: dict[str, Any] = {"id": form.get("new_id", "").strip(), "bus": old["bus"], "model": old["model"]}
        if old["unit_id"] is not None:
            new["unit_id"] = _whole(form, "unit_id")
        else:
            new["address"] = form.get("address", "").strip()
        body = _json(MeterSwap, {"new_meter": new, "final_wh": _whole(form, "final_wh"),
                                 "initial_wh": _whole(form, "initial_wh"), "reason": reason})
        await fleet_routes.swap_meter(target, body, service, caller)
    else:  # acknowledge, resolve
        if not target.isdigit() or len(target) > 18:
            raise Refused("no such alarm")
        body = _json(AlarmAction, {"reason": reason})
        desk = service.alarms
        await (desk.acknowledge if name == "acknowledge" else desk.resolve)(int(target), actor=caller.name,
                                                                           reason=body.reason)
    return page.locale.text("Done: %(what)s", what=page.locale.text(ACTIONS[name].title))


def _why(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg']}" for e in exc.errors())
    kind = kind_of(exc)
    detail = exc.detail if isinstance(exc, Problem) else str(exc)
    return f"{kind.title}: {detail}" if kind is not None else str(exc)


async def _confirm_page(page: Page, name: str, target: str, *, form: dict[str, str] | None = None,
                        error: str | None = None, status: int = 200) -> Response:
    action = ACTIONS[name]
    verdict, context = None, {}
    try:
        if name in ("disconnect", "reconnect"):  # what the guardrails say now (nothing is queued)
            dry = await manual_command(page.service, target, "open" if name == "disconnect" else "close",
                                       role=page.caller.role, actor=page.caller.name, operator=page.caller.name,
                                       reason="(dashboard: confirmation)", dry_run=True)
            verdict = {"allowed": dry.allowed, "reason": dry.reason}
        if action.target == "meter":
            context["meter"] = await page.service.views.meter(target)
        elif action.target == "account":
            context["account"] = await page.service.views.account(target)
        else:
            context["alarm"] = await page.service.alarms.get(int(target)) if target.isdigit() else None
    except Exception as exc:  # an unknown target: the confirmation page says so
        if kind_of(exc) is None:
            raise
        error, status = error or _why(exc), 404 if status == 200 else status
    return render(page, "confirm.html", status=status, name=name, action=action, target=target,
                  form=form or {}, error=error, verdict=verdict, back=back_to(action, target), **context)


def _not_yours(page: Page) -> str:
    return page.locale.text("The role %(role)s may not do this.", role=page.caller.role)


@router.get("/{name}/{target}", response_class=HTMLResponse)
async def confirm(request: Request, name: str, target: str) -> Response:
    page = await page_of(request)
    if name not in ACTIONS:
        return render(page, "error.html", status=404, message="Nothing to show.")
    if not may(page.caller, name):
        return render(page, "error.html", status=403, message=_not_yours(page))
    return await _confirm_page(page, name, target)


@router.post("/{name}/{target}")
async def act(request: Request, name: str, target: str) -> Response:
    page = await page_of(request)
    form = parse_form(await request.body())
    if not same_origin(request) or not request.app.state.sessions.csrf_ok(page.session, form.get("csrf")):
        return render(page, "error.html", status=403, message="The form has expired; please try again.")
    if name not in ACTIONS:
        return render(page, "error.html", status=404, message="Nothing to show.")
    if not may(page.caller, name):
        return render(page, "error.html", status=403, message=_not_yours(page))
    try:
        message = await _perform(page, name, target, form)
    except (Refused, ValidationError) as exc:
        return await _confirm_page(page, name, target, form=form, error=_why(exc), status=422)
    except Exception as exc:
        kind = kind_of(exc)
        if kind is None:
            raise
        return await _confirm_page(page, name, target, form=form, error=_why(exc), status=kind.status)
    return redirect(back_to(ACTIONS[name], target), flash=message)
