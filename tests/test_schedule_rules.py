"""Schedules: validation, the DST and month-end policies by name, and hypothesis properties."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasker.schedule import Cron, Daily, Interval, Monthly, Schedule, Weekly

ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",  # a 30-minute DST shift
    "Asia/Kolkata",  # a half-hour offset, no DST
]
# Dates with DST transitions in 2026, to centre random windows on.
TRANSITIONS = [
    datetime(2026, 3, 8, 7, tzinfo=UTC),  # US spring forward
    datetime(2026, 3, 29, 1, tzinfo=UTC),  # EU spring forward
    datetime(2026, 4, 4, 15, tzinfo=UTC),  # Lord Howe fall back
    datetime(2026, 10, 3, 15, tzinfo=UTC),  # Lord Howe spring forward
    datetime(2026, 10, 25, 1, tzinfo=UTC),  # EU fall back
    datetime(2026, 11, 1, 6, tzinfo=UTC),  # US fall back
]
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def slots(schedule: Schedule, start: datetime, count: int) -> list[datetime]:
    result, moment = [], start
    for _ in range(count):
        moment = schedule.next_after(moment)
        result.append(moment)
    return result


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: Daily(24), "hour"),
        (lambda: Daily(0, 60), "minute"),
        (lambda: Daily(0, 0, 60), "second"),
        (lambda: Monthly(0), "day"),
        (lambda: Monthly(32), "day"),
        (lambda: Weekly(7), "weekday"),
        (lambda: Weekly("someday"), "weekday"),
        (lambda: Daily(tz="Mars/Olympus"), "tz"),
        (lambda: Interval(0), "every"),
        (lambda: Interval(-1), "every"),
        (lambda: Interval(float("nan")), "every"),
        (lambda: Interval(timedelta(0)), "every"),
        (lambda: Cron("61 * * * *"), "minute"),
        (lambda: Cron("* 24 * * *"), "hour"),
        (lambda: Cron("* * 0 * *"), "day of month"),
        (lambda: Cron("* * * 13 *"), "month"),
        (lambda: Cron("* * * * 8"), "day of week"),
        (lambda: Cron("*/0 * * * *"), "minute"),
        (lambda: Cron("5-1 * * * *"), "minute"),
        (lambda: Cron("* * * * * *"), "5 fields"),
        (lambda: Cron("x * * * *"), "minute"),
        (lambda: Cron("0 0 31 2 *"), "never occurs"),
    ],
)
def test_invalid_values_name_the_field(factory: object, field: str) -> None:
    """Invalid values raise ValueError at construction, naming the field."""
    with pytest.raises(ValueError, match=field):
        factory()  # type: ignore[operator]


def test_naive_moment_is_rejected() -> None:
    """next_after refuses a naive datetime with a clear message."""
    for schedule in (Interval(1), Daily(), Weekly(0), Monthly(), Cron("* * * * *")):
        with pytest.raises(ValueError, match="naive"):
            schedule.next_after(datetime(2026, 1, 1))


def test_values_are_frozen_hashable_and_equal_by_value() -> None:
    """Schedules are value objects with readable reprs."""
    assert Daily(3, tz="Europe/Berlin") == Daily(3, tz="Europe/Berlin")
    assert len({Cron("0 * * * *"), Cron("0 * * * *")}) == 1
    assert repr(Daily(3, tz="Europe/Berlin")) == (
        "Daily(hour=3, minute=0, second=0, tz='Europe/Berlin')"
    )
    assert repr(Interval(0.2)) == "Interval(0.2)"
    with pytest.raises(AttributeError):
        Daily().hour = 5  # type: ignore[misc]


def test_cron_names_ranges_steps_and_aliases() -> None:
    """Names, ranges, steps, 7 as Sunday and the @aliases parse as in cron."""
    assert Cron("@hourly").next_after(utc(2026, 1, 1, 0, 30)) == utc(2026, 1, 1, 1)
    weekdays = Cron("0 9 * * mon-fri")
    days = [s.weekday() for s in slots(weekdays, utc(2026, 1, 1), 10)]
    assert set(days) == {0, 1, 2, 3, 4}
    assert Cron("0 0 * * 7").next_after(utc(2026, 1, 1)).weekday() == 6  # Sunday
    assert Cron("0 0 1 jan,jul *").next_after(utc(2026, 2, 1)) == utc(2026, 7, 1)
    assert [s.minute for s in slots(Cron("10-30/10 * * * *"), utc(2026, 1, 1), 3)] == [10, 20, 30]
    assert [s.minute for s in slots(Cron("45/5 * * * *"), utc(2026, 1, 1), 3)] == [45, 50, 55]


def test_cron_day_fields_or_rule() -> None:
    """With both day fields restricted, a day matches if either does (Vixie cron)."""
    schedule = Cron("0 0 13 * fri")
    found = slots(schedule, utc(2026, 1, 1), 8)
    assert all(s.day == 13 or s.weekday() == 4 for s in found)
    assert any(s.day == 13 and s.weekday() != 4 for s in found)


def test_cron_day_of_week_makes_an_impossible_day_of_month_valid() -> None:
    """``30 2`` never occurs, but with a restricted weekday the OR rule fires on those days."""
    schedule = Cron("8 10 30 2 sat,sun")
    found = slots(schedule, utc(2026, 1, 1), 8)
    assert found[0] == utc(2026, 2, 1, 10, 8)  # a Sunday
    assert all(s.month == 2 and s.weekday() in (5, 6) for s in found)
    with pytest.raises(ValueError, match="never occurs"):
        Cron("8 10 30 2 *")  # the day of month decides alone


# -- month end and leap days -----------------------------------------------------------------


def test_monthly_day_31_in_30_day_month() -> None:
    """Monthly(31) fires on the 30th in a 30-day month; Cron keeps cron's skip rule."""
    assert Monthly(31).next_after(utc(2026, 4, 1)) == utc(2026, 4, 30)
    assert Cron("0 0 31 * *").next_after(utc(2026, 4, 1)) == utc(2026, 5, 31)


@pytest.mark.parametrize(("year", "day"), [(2026, 28), (2028, 29)])
def test_monthly_day_31_in_february(year: int, day: int) -> None:
    """Monthly(31) fires on February's last day in leap and common years: no month skipped."""
    assert Monthly(31).next_after(utc(year, 2, 1)) == utc(year, 2, day)
    months = [s.month for s in slots(Monthly(31), utc(year, 1, 1), 12)]
    assert months == list(range(1, 13))


def test_leap_day() -> None:
    """Cron on 29 February waits for the next leap year; Monthly(29) clamps in February."""
    assert Cron("0 12 29 2 *").next_after(utc(2026, 3, 1)) == utc(2028, 2, 29, 12)
    assert Monthly(29).next_after(utc(2027, 2, 1)) == utc(2027, 2, 28)


# -- DST ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule",
    [
        Daily(2, 30, tz="Europe/Berlin"),
        Weekly("sun", 2, 30, tz="Europe/Berlin"),
        Monthly(29, 2, 30, tz="Europe/Berlin"),
        Cron("30 2 * * *", tz="Europe/Berlin"),
    ],
    ids=["daily", "weekly", "monthly", "cron"],
)
def test_missing_time(schedule: Schedule) -> None:
    """02:30 does not exist on 29 March 2026 in Berlin: it fires at 03:00 CEST, once."""
    fired = schedule.next_after(utc(2026, 3, 28, 23))
    assert fired == datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN)
    assert fired.astimezone(UTC) == utc(2026, 3, 29, 1)
    assert schedule.next_after(fired) > utc(2026, 3, 29, 2)


@pytest.mark.parametrize(
    ("schedule", "zone", "first"),
    [
        (Daily(2, 30, tz="Europe/Berlin"), BERLIN, utc(2026, 10, 25, 0, 30)),
        (Weekly(6, 2, 30, tz="Europe/Berlin"), BERLIN, utc(2026, 10, 25, 0, 30)),
        (Monthly(25, 2, 30, tz="Europe/Berlin"), BERLIN, utc(2026, 10, 25, 0, 30)),
        (Cron("30 2 * * *", tz="Europe/Berlin"), BERLIN, utc(2026, 10, 25, 0, 30)),
        (Daily(1, 30, tz="America/New_York"), NEW_YORK, utc(2026, 11, 1, 5, 30)),
        (Cron("30 1 * * *", tz="America/New_York"), NEW_YORK, utc(2026, 11, 1, 5, 30)),
    ],
)
def test_repeated_time(schedule: Schedule, zone: ZoneInfo, first: datetime) -> None:
    """A wall time that occurs twice on a fall-back day fires once, at its first occurrence."""
    fired = schedule.next_after(first - timedelta(hours=3))
    assert fired.astimezone(UTC) == first
    following = schedule.next_after(fired)
    assert following.astimezone(UTC) > first + timedelta(hours=12)


def test_interval_is_anchored_to_the_epoch_or_the_anchor() -> None:
    """Interval slots are multiples of every since the anchor, whatever the moment's zone."""
    assert Interval(3600).next_after(datetime(2026, 1, 1, 0, 30, tzinfo=BERLIN)) == utc(2026, 1, 1)
    anchored = Interval(60, anchor=utc(2026, 1, 1, 0, 0, 7))
    assert anchored.next_after(utc(2026, 1, 1, 0, 5)) == utc(2026, 1, 1, 0, 5, 7)


# -- properties ---------------------------------------------------------------------------

moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2060, 1, 1), timezones=st.just(UTC)
)
near_transitions = st.builds(
    lambda base, hours: base + timedelta(hours=hours),
    st.sampled_from(TRANSITIONS),
    st.floats(-72, 24),
)
zones = st.sampled_from(ZONES)
calendar_schedules = st.one_of(
    st.builds(Daily, st.integers(0, 23), st.integers(0, 59), st.integers(0, 59), tz=zones),
    st.builds(Weekly, st.integers(0, 6), st.integers(0, 23), st.integers(0, 59), tz=zones),
    st.builds(Monthly, st.integers(1, 31), st.integers(0, 23), st.integers(0, 59), tz=zones),
)


def _field(low: int, high: int) -> st.SearchStrategy[str]:
    value = st.integers(low, high)
    return st.one_of(
        st.just("*"),
        st.integers(2, 15).map(lambda n: f"*/{n}"),
        value.map(str),
        st.tuples(value, value).map(lambda ab: f"{min(ab)}-{max(ab)}"),
        st.lists(value, min_size=1, max_size=3).map(lambda vs: ",".join(map(str, vs))),
    )


cron_expressions = st.tuples(
    _field(0, 59),
    _field(0, 23),
    st.sampled_from(["*", "*", "1-15", "10,20", "*/3"]),
    st.sampled_from(["*", "*", "*", "3,10,11", "4-11/2"]),
    st.sampled_from(["*", "*", "1-5", "0,6"]),
).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(schedule=calendar_schedules, start=st.one_of(moments, near_transitions))
def test_calendar_results_increase_and_match_fields(schedule: Schedule, start: datetime) -> None:
    """Slots strictly increase and show the spec's wall time, or the instant after a gap."""
    previous = start
    for fired in slots(schedule, start, 5):
        assert fired > previous
        previous = fired
        spec = time(schedule.hour, schedule.minute, getattr(schedule, "second", 0))  # type: ignore[attr-defined]
        zone = fired.tzinfo
        assert zone is not None
        if fired.timetz().replace(tzinfo=None) != spec:
            # Only allowed when the spec's wall time does not exist that day.
            naive = datetime.combine(fired.date(), spec)
            roundtrip = naive.replace(tzinfo=zone).astimezone(UTC).astimezone(zone)
            assert roundtrip.replace(tzinfo=None) != naive, "the spec's wall time exists"
            before = (fired.astimezone(UTC) - timedelta(seconds=1)).astimezone(zone)
            assert before.utcoffset() != fired.utcoffset(), "a shifted slot must follow a gap"


@settings(max_examples=150, deadline=None)
@given(
    schedule=st.one_of(
        calendar_schedules, cron_expressions.map(lambda e: Cron(e, tz="Europe/Berlin"))
    ),
    start=st.one_of(moments, near_transitions),
    fraction=st.floats(0, 1, exclude_max=True),
)
def test_every_moment_in_a_slot_maps_to_the_same_next_slot(
    schedule: Schedule, start: datetime, fraction: float
) -> None:
    """All moments between two slots map to the later one; just before a slot maps to it."""
    first = schedule.next_after(start)
    second = schedule.next_after(first)
    span = (second - first) // timedelta(microseconds=1)
    inside = first + timedelta(microseconds=min(int(span * fraction), span - 1))
    assert first <= inside < second
    assert schedule.next_after(inside) == second
    assert schedule.next_after(second - timedelta(microseconds=1)) == second


@settings(max_examples=300, deadline=None)
@given(
    every=st.one_of(
        st.integers(1, 10**6).map(lambda us: timedelta(microseconds=us)),
        st.floats(0.001, 100_000),
    ),
    start=moments,
)
def test_interval_properties(every: timedelta | float, start: datetime) -> None:
    """next_after(m) - m lies in (0, every] and the slot is a multiple of every."""
    schedule = Interval(every)
    fired = schedule.next_after(start)
    assert timedelta(0) < fired - start <= schedule.every
    assert (fired - schedule.anchor) % schedule.every == timedelta(0)


def oracle(expression: str, zone_name: str, start: datetime, end: datetime) -> list[datetime]:
    """Every cron slot in [start, end), by brute force over each UTC minute."""
    zone = ZoneInfo(zone_name)
    cron = Cron(expression, tz=zone_name)
    minute_f, hour_f, dom_f, month_f, dow_f = (
        set(cron._minutes),
        set(cron._hours),
        cron._doms,
        cron._months,
        cron._dows,
    )

    def wall_matches(wall: datetime) -> bool:
        if wall.minute not in minute_f or wall.hour not in hour_f or wall.month not in month_f:
            return False
        dom, dow = wall.day in dom_f, (wall.weekday() + 1) % 7 in dow_f
        return (dom and dow) if (cron._dom_star or cron._dow_star) else (dom or dow)

    found = []
    moment = start.replace(second=0, microsecond=0)
    previous = (moment - timedelta(minutes=1)).astimezone(zone)
    while moment < end:
        local = moment.astimezone(zone)
        hit = local.fold == 0 and wall_matches(local.replace(tzinfo=None))
        gap = local.utcoffset() > previous.utcoffset()  # type: ignore[operator]
        if gap and not hit:
            wall = previous.replace(tzinfo=None) + timedelta(minutes=1)
            while wall < local.replace(tzinfo=None):
                if wall_matches(wall):
                    hit = True
                    break
                wall += timedelta(minutes=1)
        if hit and moment >= start:
            found.append(moment)
        previous = local
        moment += timedelta(minutes=1)
    return found


@settings(max_examples=60, deadline=None)
@given(
    expression=cron_expressions,
    zone_name=zones,
    start=near_transitions,
    days=st.integers(1, 3),
)
def test_cron_skips_no_slot_against_brute_force(
    expression: str, zone_name: str, start: datetime, days: int
) -> None:
    """Iterating Cron.next_after finds exactly the oracle's slots, across DST changes."""
    start = start.replace(second=0, microsecond=0)
    end = start + timedelta(days=days)
    cron = Cron(expression, tz=zone_name)
    found = []
    moment = start - timedelta(microseconds=1)
    while (moment := cron.next_after(moment)) < end:
        found.append(moment.astimezone(UTC))
    assert found == oracle(expression, zone_name, start, end)


# Day fields as text, each with its meaning spelled out independently of Cron's parser.
_ALL_DAYS = set(range(1, 32))
_DOM_FIELDS = {
    "*": _ALL_DAYS,
    "*/10": {1, 11, 21, 31},
    "1-15": set(range(1, 16)),
    "28-31": {28, 29, 30, 31},
    "29": {29},
    "30": {30},
    "31": {31},
    "30,31": {30, 31},
}
_MONTH_FIELDS = {
    "*": set(range(1, 13)),
    "2": {2},
    "feb": {2},
    "2,4": {2, 4},
    "4,6,9,11": {4, 6, 9, 11},
    "1-12/2": {1, 3, 5, 7, 9, 11},
}
_DOW_FIELDS = {"*": set(range(7)), "*/3": {0, 3, 6}, "1-5": {1, 2, 3, 4, 5}, "sat,sun": {0, 6}}


def _day_fires(day: date, dom: str, month: str, dow: str) -> bool:
    """Whether cron fires on ``day``, by the OR rule applied to the fields' spelled-out sets."""
    if day.month not in _MONTH_FIELDS[month]:
        return False
    by_dom = day.day in _DOM_FIELDS[dom]
    by_dow = (day.weekday() + 1) % 7 in _DOW_FIELDS[dow]
    if dom.startswith("*") or dow.startswith("*"):
        return by_dom and by_dow
    return by_dom or by_dow


@settings(max_examples=150, deadline=None)
@given(
    dom=st.sampled_from(sorted(_DOM_FIELDS)),
    month=st.sampled_from(sorted(_MONTH_FIELDS)),
    dow=st.sampled_from(sorted(_DOW_FIELDS)),
    zone_name=zones,
    start=moments,
)
def test_cron_accepts_exactly_the_expressions_that_fire(
    dom: str, month: str, dow: str, zone_name: str, start: datetime
) -> None:
    """Cron refuses an expression iff no day in 28 years fires; else next_after finds that day."""
    expression = f"8 10 {dom} {month} {dow}"
    zone = ZoneInfo(zone_name)
    local = start.astimezone(zone)
    # 28 years hold every weekday of every date, Feb 29 included; 10:08 is never in a DST gap.
    days = (local.date() + timedelta(days=n) for n in range(366 * 28 + 1))
    firing = (d for d in days if _day_fires(d, dom, month, dow))
    expected = next(
        (
            moment
            for d in firing
            if (moment := datetime.combine(d, time(10, 8), tzinfo=zone)) > start
        ),
        None,
    )
    if expected is None:
        with pytest.raises(ValueError, match="never occurs"):
            Cron(expression, tz=zone_name)
        return
    fired = Cron(expression, tz=zone_name).next_after(start)
    assert fired == expected
    # The minute-by-minute oracle agrees: a slot, and none in the hour before it.
    window_start = max(start + timedelta(microseconds=1), fired - timedelta(hours=1))
    assert oracle(expression, zone_name, window_start, fired + timedelta(minutes=1)) == [fired]
