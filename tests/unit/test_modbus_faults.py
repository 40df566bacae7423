"""The protocol-independent fault plan (simulators/faults.py): its text form, selection and answers."""

from __future__ import annotations

import random

import pytest

from simulators.faults import NO_FAULT, Fault, FaultKind, FaultPlan, parse_faults, parse_indices


def test_text_form_and_explicit_meters() -> None:
    plan = parse_faults("no-answer@3,7; slow:0.8@1; exception:0x0B@2; garbage:0.5@4; bad-crc@5-6; "
                        "relay-stuck@8; counter-reset:2.5@9")
    assert plan.reply(3).silent and plan.reply(7).silent and not plan.reply(0).silent
    assert plan.reply(1).delay_s == 0.8
    assert plan.reply(2).exception == 11
    assert plan.reply(5).bad_crc and plan.reply(6).bad_crc
    assert plan.relay_stuck(8) and not plan.relay_stuck(7)
    assert plan.faults(9) == (Fault(FaultKind.COUNTER_RESET, after_s=2.5),)
    assert plan.faults(4)[0].probability == 0.5
    assert plan.reply(0) is NO_FAULT


def test_a_fraction_selects_the_same_meters_for_the_same_seed() -> None:
    a, b = parse_faults("no-answer@10%", seed=3), parse_faults("no-answer@10%", seed=3)
    dead = a.selected(FaultKind.NO_ANSWER, 2000)
    assert dead == b.selected(FaultKind.NO_ANSWER, 2000)
    assert 160 <= len(dead) <= 240
    assert dead != parse_faults("no-answer@10%", seed=4).selected(FaultKind.NO_ANSWER, 2000)
    both = parse_faults("no-answer@50%; slow:1@50%", seed=3)  # two rules draw independently
    assert both.selected(FaultKind.NO_ANSWER, 200) != both.selected(FaultKind.SLOW, 200)


def test_probabilities_apply_per_answer() -> None:
    plan = FaultPlan(rng=random.Random(1)).add(Fault(FaultKind.GARBAGE, probability=0.25), meters=[0])
    spoiled = sum(plan.reply(0).garbage for _ in range(4000))
    assert 850 <= spoiled <= 1150


def test_counter_reset_happens_once_when_its_time_comes() -> None:
    now = [100.0]
    plan = FaultPlan(clock=lambda: now[0]).add(Fault(FaultKind.COUNTER_RESET, after_s=5), meters=[2])
    assert not plan.counter_reset_due(2)
    now[0] += 5
    assert plan.counter_reset_due(2)
    assert not plan.counter_reset_due(2)
    assert not plan.counter_reset_due(1)


def test_faults_can_be_healed_while_running() -> None:
    plan = FaultPlan().add(Fault(FaultKind.NO_ANSWER), meters=[1, 2])
    assert plan.reply(1).silent
    plan.clear([1])
    assert not plan.reply(1).silent and plan.reply(2).silent
    plan.clear()
    assert not plan


@pytest.mark.parametrize("text", ["nope@1", "slow@1", "no-answer", "no-answer:3@1", "exception:300@1",
                                  "garbage:2@1", "no-answer@x", "no-answer@-1", "mute:2@1"])
def test_bad_rules_are_refused_with_the_rule(text: str) -> None:
    with pytest.raises(ValueError, match="fault rule"):
        parse_faults(text)


def test_mute_is_a_reply_fault_apart_from_no_answer() -> None:
    plan = parse_faults("mute@1; mute:0.5@2; no-answer@3")
    assert plan.reply(1).mute and not plan.reply(1).silent
    assert plan.reply(3).silent and not plan.reply(3).mute
    assert plan.reply(1).reply_state == "lost" and plan.reply(3).reply_state == "none"
    assert NO_FAULT.reply_state == "sent" and plan.faults(2)[0].probability == 0.5
    lost = sum(plan.reply(2).mute for _ in range(2000))
    assert 850 <= lost <= 1150


def test_text_form_of_each_fault() -> None:
    text = "no-answer@0; mute@0; mute:0.25@0; slow:0.8@0; exception:11@0; garbage:0.5@0; bad-crc@0; relay-stuck@0; " \
           "counter-reset:2.5@0; counter-reset@0"
    assert [f.text for f in parse_faults(text).faults(0)] == [
        "no-answer", "mute", "mute:0.25", "slow:0.8", "exception:11", "garbage:0.5", "bad-crc", "relay-stuck",
        "counter-reset:2.5", "counter-reset"]


def test_remove_heals_one_kind_whichever_rule_selected_the_meter() -> None:
    plan = parse_faults("no-answer@50%; mute@1,2; relay-stuck@1", seed=3)
    silent = plan.selected(FaultKind.NO_ANSWER, 40)
    assert silent, "the seed selects some meters"
    victim = silent[0]
    plan.remove([victim], FaultKind.NO_ANSWER)  # a fraction: excluded from now on
    assert not plan.reply(victim).silent
    assert plan.selected(FaultKind.NO_ANSWER, 40) == silent[1:]
    plan.remove([1], FaultKind.MUTE)
    assert not plan.reply(1).mute and plan.reply(2).mute and plan.relay_stuck(1)
    plan.remove([1])  # every kind
    assert plan.faults(1) == () and plan.reply(2).mute


def test_an_explicit_counter_reset_added_again_happens_again() -> None:
    plan = FaultPlan().add(Fault(FaultKind.COUNTER_RESET), meters=[0])
    assert plan.counter_reset_due(0) and not plan.counter_reset_due(0)
    plan.remove([0], FaultKind.COUNTER_RESET)
    plan.add(Fault(FaultKind.COUNTER_RESET), meters=[0])
    assert plan.counter_reset_due(0)


def test_parse_indices() -> None:
    assert parse_indices("3") == [3]
    assert parse_indices("0, 2-4,7") == [0, 2, 3, 4, 7]
    for bad in ("", "x", "-1", "1-x"):
        with pytest.raises(ValueError):
            parse_indices(bad)
