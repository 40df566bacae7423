"""Clients of the simulators' control interface (``simulators.control``), standard library only.

``SimulatorControl`` is synchronous (``urllib``), for tests that run the simulator as another process; from async
code use ``AsyncSimulatorControl``, which runs the same calls in a worker thread so that a simulator on the same
event loop keeps answering. Meters are named by fleet index (``0``) or protocol identity (``"5020/3"``,
``"000000000001"``). Every call returns the JSON answer; an error answer raises ``ControlError``.

    control = SimulatorControl("http://127.0.0.1:8502")
    control.fault(3, "mute")                         # meter 3 executes requests but its replies are lost
    control.set_energy("000000000002", 1_234_000)
    writes = control.relay_log(since=0, meter=3)     # what reached meter 3, executed or not
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

__all__ = ["AsyncSimulatorControl", "ControlError", "SimulatorControl"]

MeterName = int | str
# A simulator is local to the test bench: never go through an HTTP proxy named by the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ControlError(Exception):
    """An error answer (or no answer) from the control interface.

    Args:
        status: the HTTP status (0 when the simulator could not be reached).
        message: the answer's ``error`` text.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class SimulatorControl:
    """A synchronous client of one simulator's control interface.

    Args:
        base_url: e.g. ``http://127.0.0.1:8502`` (what ``--control`` was given).
        timeout: seconds per request.
    """

    def __init__(self, base_url: str, *, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request; the decoded JSON answer.

        Args:
            method: ``GET`` or ``POST``.
            path: from the root, e.g. ``/meters``.
            body: the JSON body of a POST.
        """
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with _OPENER.open(req, timeout=self.timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            with exc:
                try:
                    message = json.loads(exc.read()).get("error", exc.reason)
                except (ValueError, AttributeError):
                    message = str(exc.reason)
            raise ControlError(exc.code, str(message)) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ControlError(0, f"{self.base_url}: {exc}") from None

    def _post(self, meter: MeterName, op: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/meters/{quote(str(meter), safe='/')}/{op}", body or {})
        return result

    # --- reading --------------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Protocol, number of meters, relay writes so far, routes."""
        result: dict[str, Any] = self.request("GET", "/")
        return result

    def meters(self) -> list[dict[str, Any]]:
        """Every meter's state (see docs/simulators.md for the fields)."""
        result: list[dict[str, Any]] = self.request("GET", "/meters")
        return result

    def meter(self, meter: MeterName) -> dict[str, Any]:
        """One meter's state.

        Args:
            meter: fleet index or identity.
        """
        result: dict[str, Any] = self.request("GET", f"/meters/{quote(str(meter), safe='/')}")
        return result

    def relay_log(self, since: int = 0, *, meter: MeterName | None = None) -> list[dict[str, Any]]:
        """Relay writes received after entry ``since``, oldest first.

        Args:
            since: the last entry number already seen (0: all).
            meter: only this meter's writes.
        """
        query = {"since": since} | ({} if meter is None else {"meter": meter})
        result: list[dict[str, Any]] = self.request("GET", f"/relay-log?{urlencode(query)}")["entries"]
        return result

    def wait_for_relay_write(self, predicate: Callable[[dict[str, Any]], bool], *, since: int = 0,
                             timeout: float = 5.0, interval: float = 0.02) -> dict[str, Any]:
        """Poll the relay log until an entry after ``since`` satisfies ``predicate``; TimeoutError otherwise.

        Args:
            predicate: e.g. ``lambda e: e["meter"] == 3 and e["asked"] == "trip"``.
            since: the last entry number already seen.
            timeout: seconds to wait.
            interval: seconds between polls.
        """
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.relay_log(since):
                if predicate(entry):
                    return entry
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching relay write within {timeout}s")
            time.sleep(interval)

    # --- changing -------------------------------------------------------------------------------------------
    def set_energy(self, meter: MeterName, energy_wh: float) -> dict[str, Any]:
        """Set the energy counter (Wh)."""
        return self._post(meter, "energy", {"energy_wh": energy_wh})

    def set_power(self, meter: MeterName, watts: float | None) -> dict[str, Any]:
        """Hold the load at ``watts`` (``None``: back to the load profile)."""
        return self._post(meter, "power", {"watts": watts})

    def fault(self, meter: MeterName, kind: str, on: bool = True, **options: float) -> dict[str, Any]:
        """Switch one kind of fault on or off for one meter (``kind="all", on=False`` heals every fault).

        Args:
            meter: fleet index or identity.
            kind: ``no-answer``, ``mute``, ``relay-stuck``, ``slow``, ``exception``, ``garbage``, ``bad-crc``,
                ``counter-reset``, ``cover-open``, ``terminal-cover-open``.
            on: switch on (replacing the meter's fault of that kind) or off.
            options: ``seconds`` (slow, counter-reset), ``code`` (exception), ``probability``.
        """
        return self._post(meter, "fault", {"kind": kind, "on": on, **options})

    def silence(self, meter: MeterName) -> dict[str, Any]:
        """``no-answer``: the meter hears nothing and answers nothing."""
        return self.fault(meter, "no-answer")

    def revive(self, meter: MeterName) -> dict[str, Any]:
        """Undo ``silence`` and ``mute``."""
        self.fault(meter, "no-answer", on=False)
        return self.fault(meter, "mute", on=False)

    def mute(self, meter: MeterName, on: bool = True) -> dict[str, Any]:
        """``mute``: the meter executes requests but its replies are lost."""
        return self.fault(meter, "mute", on)

    def stick(self, meter: MeterName, on: bool = True) -> dict[str, Any]:
        """``relay-stuck``: relay commands are acknowledged, the contact does not move."""
        return self.fault(meter, "relay-stuck", on)

    def open_cover(self, meter: MeterName, on: bool = True, *, terminal: bool = False) -> dict[str, Any]:
        """``cover-open`` (``terminal``: ``terminal-cover-open``): the meter reports the tamper flag until
        called with ``on=False``."""
        return self.fault(meter, "terminal-cover-open" if terminal else "cover-open", on)

    def clear_faults(self, meter: MeterName) -> dict[str, Any]:
        """Heal every fault of the meter."""
        return self.fault(meter, "all", on=False)

    def set_trip_delay(self, meter: MeterName, seconds: float) -> dict[str, Any]:
        """Real seconds between a trip and the contact opening."""
        return self._post(meter, "trip-delay", {"seconds": seconds})

    def protect(self, meter: MeterName, on: bool = True) -> dict[str, Any]:
        """Enter or leave 保电 (DL/T 645 only)."""
        return self._post(meter, "protect", {"on": on})

    def press_button(self, meter: MeterName) -> dict[str, Any]:
        """The customer presses the button: closes a relay armed by 1BH (its ``button_closed`` says whether)."""
        return self._post(meter, "button")


class AsyncSimulatorControl:
    """``SimulatorControl`` for async code: the same methods, awaited (each runs in a worker thread).

    Args:
        base_url: as for ``SimulatorControl``.
        timeout: as for ``SimulatorControl``.
    """

    def __init__(self, base_url: str, *, timeout: float = 5.0) -> None:
        self.sync = SimulatorControl(base_url, timeout=timeout)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.sync, name)
        if not callable(method) or name.startswith("_"):
            raise AttributeError(name)

        @functools.wraps(method)
        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(method, *args, **kwargs)

        return call
