"""The protocol-free simulated meter and its load profile (simulators/meter.py, simulators/loadprofile.py)."""

from __future__ import annotations

import pytest

from simulators.loadprofile import LoadProfile, unit_random
from simulators.meter import RATE_BY_HOUR, ManualClock, SimClock, SimulatedMeter

MIDNIGHT_LOCAL = 1_795_363_200  # 2026-11-23 00:00 in UTC+8 (Asia/Shanghai)


def test_profiles_are_deterministic_and_differ_by_meter():
    a, b = LoadProfile.seeded(42, 7), LoadProfile.seeded(42, 7)
    assert a == b
    assert [a.power_w(t) for t in range(0, 86400, 900)] == [b.power_w(t) for t in range(0, 86400, 900)]
    assert LoadProfile.seeded(42, 8) != a
    assert LoadProfile.seeded(43, 7) != a
    assert unit_random(1, 2, 3) == unit_random(1, 2, 3) != unit_random(1, 2, 4)


def test_profile_has_an_evening_peak_and_stays_positive():
    profile = LoadProfile(base_w=100, peak_w=2000, noise=0.0)
    evening = profile.power_w(MIDNIGHT_LOCAL + 19.5 * 3600)
    night = profile.power_w(MIDNIGHT_LOCAL + 3 * 3600)
    assert evening > 1500 > 200 > night >= 100


def test_segments_cover_the_interval_with_slot_power():
    profile = LoadProfile.seeded(0, 0)
    pieces = list(profile.segments(30.0, 200.0))
    assert [(s, e) for s, e, _ in pieces] == [(30.0, 60.0), (60.0, 120.0), (120.0, 180.0), (180.0, 200.0)]
    assert pieces[1][2] == profile.slot_power_w(1)


def test_profile_refuses_slots_that_span_hours():
    with pytest.raises(ValueError):
        LoadProfile(slot_s=7 * 60)


def meter(**kwargs) -> tuple[SimulatedMeter, ManualClock]:
    clock = ManualClock(MIDNIGHT_LOCAL)
    return SimulatedMeter(LoadProfile.seeded(1, 1), clock=clock, **kwargs), clock


def test_energy_integrates_power_lazily():
    m, clock = meter(energy_wh=1000)
    m.set_power_w(3600)
    assert m.energy_wh == 1000
    clock.advance(60)
    assert m.energy_wh == 1060
    clock.advance(3600)
    assert m.energy_wh == 4660
    assert m.power_w == 3600
    assert m.current_a == pytest.approx(3600 / m.voltage_v)


def test_energy_follows_the_profile_when_not_overridden():
    m, clock = meter()
    profile = m.profile
    clock.advance(7200)
    expected = sum(w * (e - s) / 3600 for s, e, w in profile.segments(MIDNIGHT_LOCAL, MIDNIGHT_LOCAL + 7200))
    assert m.energy_wh == int(expected)


def test_energy_is_split_by_time_of_use_rate():
    m, clock = meter()
    m.set_power_w(1000)
    clock.advance(24 * 3600)
    hours_per_rate = [RATE_BY_HOUR.count(r) for r in range(4)]
    assert m.energy_wh_by_rate == tuple(1000 * h for h in hours_per_rate)
    assert m.energy_wh == 24_000


def test_open_relay_stops_energy_and_power():
    m, clock = meter()
    m.set_power_w(2000)
    m.set_relay(False)
    assert not m.relay_closed and not m.relay_commanded_closed
    before = m.energy_wh
    clock.advance(3600)
    assert m.energy_wh == before
    assert m.power_w == 0 and m.current_a == 0
    m.set_relay(True)
    clock.advance(1800)
    assert m.energy_wh == before + 1000


def test_trip_delay_keeps_the_contact_closed_for_a_while():
    m, clock = meter(trip_delay_s=2.0)
    m.set_power_w(3600)
    m.set_relay(False)
    assert m.relay_closed and not m.relay_commanded_closed
    clock.advance(1.0)
    assert m.relay_closed
    clock.advance(9.0)
    assert not m.relay_closed
    assert m.energy_wh == 2  # 2 s at 3600 W before the contact opened


def test_trip_delay_scales_with_simulation_speed():
    clock = ManualClock(0.0, speed=60.0)
    m = SimulatedMeter(LoadProfile(), clock=clock, trip_delay_s=1.0)
    m.set_relay(False)
    clock.advance(59.0)
    assert m.relay_closed
    clock.advance(1.0)
    assert not m.relay_closed


def test_counter_can_be_reset():
    m, _ = meter(energy_wh=5000)
    m.set_energy_wh(0)
    assert m.energy_wh == 0


def test_sim_clock_runs_at_speed():
    now = [100.0]
    clock = SimClock(speed=3600, start=0.0, monotonic=lambda: now[0])
    now[0] += 0.5
    assert clock.now() == 1800.0
    with pytest.raises(ValueError):
        SimClock(speed=0)
