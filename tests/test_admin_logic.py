"""The admin's pure pieces: the timeline SVG, the results diff, readable policies, formatting."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

import pytest

from trusthub_eval.diff import compare_results
from trusthub_eval.display import error_code_link, format_duration
from trusthub_eval.requirements import describe_requirements
from trusthub_eval.timeline import COLOURS, TimelinePoint, lane_y, render_timeline

UTC = datetime.UTC
T0 = datetime.datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def circles(svg: str) -> list[dict[str, str]]:
    """Each <circle>'s attributes, in document order."""
    return [
        dict(re.findall(r'(\w[\w-]*)="([^"]*)"', match))
        for match in re.findall(r"<circle ([^>]*)>", svg)
    ]


# --- timeline ----------------------------------------------------------------------------------


def test_timeline_draws_one_dot_per_point_in_its_lane_and_colour():
    points = [
        TimelinePoint(T0, "noncompliant"),
        TimelinePoint(T0 + datetime.timedelta(days=10), "compliant"),
        TimelinePoint(T0 + datetime.timedelta(days=20), "failed"),
    ]
    svg = render_timeline(points)
    dots = circles(svg)
    assert [dot["class"] for dot in dots] == [
        "tl-point tl-noncompliant",
        "tl-point tl-compliant",
        "tl-point tl-failed",
    ]
    assert [dot["fill"] for dot in dots] == [
        COLOURS["noncompliant"],
        COLOURS["compliant"],
        COLOURS["failed"],
    ]
    assert [int(dot["cy"]) for dot in dots] == [
        lane_y("noncompliant"),
        lane_y("compliant"),
        lane_y("failed"),
    ]
    # Three distinct colours and lanes: the outcome is told twice.
    assert len({dot["fill"] for dot in dots}) == 3
    assert lane_y("compliant") < lane_y("noncompliant") < lane_y("failed")


def test_timeline_places_points_by_time_oldest_left_whatever_the_input_order():
    late = TimelinePoint(T0 + datetime.timedelta(days=30), "compliant", label="late")
    early = TimelinePoint(T0, "noncompliant", label="early")
    middle = TimelinePoint(T0 + datetime.timedelta(days=15), "compliant", label="middle")
    dots = circles(render_timeline([late, early, middle]))
    xs = [float(dot["cx"]) for dot in dots]
    assert xs == sorted(xs)
    # Linear in time: the middle point sits halfway between the others.
    assert xs[1] == pytest.approx((xs[0] + xs[2]) / 2, abs=0.1)


def test_timeline_step_line_joins_verdicts_but_not_failures():
    svg = render_timeline(
        [
            TimelinePoint(T0, "compliant"),
            TimelinePoint(T0 + datetime.timedelta(days=1), "failed"),
            TimelinePoint(T0 + datetime.timedelta(days=2), "noncompliant"),
        ]
    )
    path = re.search(r'<path class="tl-line" d="([^"]*)"', svg)
    assert path is not None
    # Starts in the compliant lane and steps down to the noncompliant one; never visits "failed".
    assert path.group(1).startswith("M")
    assert f" {lane_y('compliant')}" in path.group(1)
    assert f"V{lane_y('noncompliant')}" in path.group(1)
    assert f"V{lane_y('failed')}" not in path.group(1)


def test_timeline_links_points_and_escapes_their_tooltips():
    svg = render_timeline(
        [TimelinePoint(T0, "compliant", label='<script>alert("x")</script>', url="/e/1/?a=1&b=2")]
    )
    assert (
        '<a href="/e/1/?a=1&amp;b=2" aria-label="2025-01-01 12:00 · Compliant · &lt;script' in svg
    )
    assert "<script>" not in svg
    # A group of links, not an image (whose content assistive technology would skip).
    assert 'role="group"' in svg and 'role="img"' not in svg
    assert "&lt;script&gt;" in svg
    assert "2025-01-01 12:00" in svg  # the tooltip starts with the date


def test_timeline_says_a_failed_evaluation_failed_not_the_profile():
    svg = render_timeline([TimelinePoint(T0, "failed", label="Evaluation #8")])
    labels = re.findall(r'<text class="tl-label"[^>]*>([^<]*)</text>', svg)
    assert labels[:3] == ["Compliant", "Noncompliant", "Evaluation failed"]
    assert "<title>2025-01-01 12:00 · Evaluation failed · Evaluation #8</title>" in svg


def axis_labels(svg: str) -> list[str]:
    return re.findall(r'text-anchor="(?:start|middle|end)">([^<]*)</text>', svg)


@pytest.mark.parametrize(
    ("offsets", "expected"),
    [
        # Within one minute: seconds tell the ticks apart.
        (
            [0, 20, 50],
            [
                "01-01 12:00:00",
                "01-01 12:00:12",
                "01-01 12:00:25",
                "01-01 12:00:37",
                "01-01 12:00:50",
            ],
        ),
        # Within three seconds: each second once.
        ([0, 1, 2], ["01-01 12:00:00", "01-01 12:00:01", "01-01 12:00:02"]),
        # Within three days: whole days would repeat.
        (
            [0, 3 * 86400],
            ["01-01 12:00", "01-02 06:00", "01-03 00:00", "01-03 18:00", "01-04 12:00"],
        ),
        ([0, 30 * 86400], ["2025-01-01", "2025-01-09", "2025-01-16", "2025-01-24", "2025-01-31"]),
    ],
    ids=["one-minute", "three-seconds", "three-days", "a-month"],
)
def test_timeline_axis_labels_are_distinct(offsets, expected):
    points = [TimelinePoint(T0 + datetime.timedelta(seconds=s), "compliant") for s in offsets]
    assert axis_labels(render_timeline(points)) == expected


def test_timeline_with_a_single_point_centres_it():
    dots = circles(render_timeline([TimelinePoint(T0, "compliant")], width=400))
    assert len(dots) == 1
    assert 180 < float(dots[0]["cx"]) < 300


def test_timeline_of_an_empty_history_says_so():
    svg = render_timeline([])
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "<circle" not in svg and "tl-grid" not in svg  # the message is not crossed out
    assert "No finished evaluations yet." in svg
    assert 'aria-label="Compliance timeline: no finished evaluations yet"' in svg


def test_timeline_rejects_an_unknown_outcome():
    with pytest.raises(ValueError, match="Unknown outcome"):
        render_timeline([TimelinePoint(T0, "queued")])


# --- the diff ----------------------------------------------------------------------------------


@dataclass
class Result:
    requirement_name: str
    passed: bool
    requirement_friendly_name: str = ""


def names(changes) -> list[str]:
    return [change.name for change in changes]


def test_diff_sorts_requirements_into_newly_failing_fixed_and_unchanged():
    previous = [Result("a", True), Result("b", False), Result("c", False), Result("d", True)]
    current = [Result("a", False), Result("b", True), Result("c", False), Result("d", True)]
    diff = compare_results(previous, current)
    assert names(diff.newly_failing) == ["a"]
    assert names(diff.fixed) == ["b"]
    assert names(diff.unchanged) == ["c", "d"]
    assert (diff.newly_failing[0].before, diff.newly_failing[0].after) == (True, False)
    assert (diff.fixed[0].before, diff.fixed[0].after) == (False, True)


def test_diff_handles_requirements_present_on_one_side_only():
    previous = [Result("gone_failing", False), Result("gone_passing", True)]
    current = [Result("new_failing", False), Result("new_passing", True)]
    diff = compare_results(previous, current)
    assert names(diff.newly_failing) == ["new_failing"]
    assert diff.newly_failing[0].before is None
    assert names(diff.fixed) == ["gone_failing"]
    assert diff.fixed[0].after is None
    assert set(names(diff.unchanged)) == {"new_passing", "gone_passing"}


def test_diff_labels_with_the_friendly_name_and_counts_a_duplicate_as_failing():
    previous = [Result("x", True, "Business Information")]
    current = [
        Result("x", True, "Business Information"),
        Result("x", False, "Business Information"),
    ]
    diff = compare_results(previous, current)
    assert names(diff.newly_failing) == ["x"]
    assert diff.newly_failing[0].label == "Business Information"


def test_diff_of_identical_results_is_all_unchanged():
    results = [Result("a", True), Result("b", False)]
    diff = compare_results(results, results)
    assert not diff.newly_failing and not diff.fixed
    assert names(diff.unchanged) == ["a", "b"]


# --- readable policies -------------------------------------------------------------------------

SPEC_REQUIREMENTS = {
    "end_user": [
        {
            "url": "/EndUserTypes/customer_profile_business_information",
            "fields": ["business_type", "business_name"],
            "type": "customer_profile_business_information",
            "name": "Business Information",
            "requirement_name": "customer_profile_business_information",
        }
    ],
    "supporting_trust_products": [],
    "supporting_document": [
        [
            {
                "description": "Customer Profile HQ Physical Address",
                "type": "document",
                "name": "Physical Business Address",
                "accepted_documents": [
                    {
                        "url": "/SupportingDocumentTypes/customer_profile_address",
                        "fields": ["address_sids"],
                        "type": "customer_profile_address",
                        "name": "Physical Business Address",
                    }
                ],
                "requirement_name": "customer_profile_address",
            }
        ]
    ],
    "supporting_customer_profiles": [],
}


def test_requirements_of_the_spec_example_become_readable_sections():
    sections = describe_requirements(SPEC_REQUIREMENTS)
    assert [section.key for section in sections] == ["end_user", "supporting_document"]
    end_user = sections[0].items[0]
    assert (end_user.name, end_user.type) == (
        "Business Information",
        "customer_profile_business_information",
    )
    assert end_user.fields == ["business_type", "business_name"]
    document = sections[1].items[0]
    assert document.type == "customer_profile_address"
    assert document.description == "Customer Profile HQ Physical Address"
    assert [(a.name, a.type, a.fields) for a in document.accepted] == [
        ("Physical Business Address", "customer_profile_address", ["address_sids"])
    ]
    assert not sections[0].unreadable and not sections[1].unreadable


def test_requirements_of_an_unknown_shape_are_kept_as_json():
    sections = describe_requirements({"end_user": [{"name": "Known"}, 42], "new_kind": {"x": 1}})
    assert sections[0].items[0].name == "Known"
    assert "42" in sections[0].unreadable
    assert sections[1].title == "New kind"
    assert '"x": 1' in sections[1].unreadable


@pytest.mark.parametrize("empty", [None, {}, []])
def test_no_requirements_give_no_sections(empty):
    assert describe_requirements(empty) == []


# --- formatting --------------------------------------------------------------------------------


def test_error_codes_link_to_twilios_error_pages():
    assert error_code_link(22214) == (
        '<a href="https://www.twilio.com/docs/errors/22214" target="_blank" '
        'rel="noopener noreferrer" class="trusthub-error-code">22214</a>'
    )
    assert 'href="https://www.twilio.com/docs/errors/22215"' in error_code_link("22215")
    assert error_code_link(None) == ""
    assert error_code_link("<b>") == "&lt;b&gt;"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.85, "850 ms"), (4.25, "4.2 s"), (185, "3 min 5 s"), (7800, "2 h 10 min")],
)
def test_durations_read_naturally(seconds, text):
    assert format_duration(datetime.timedelta(seconds=seconds)) == text


def test_an_unknown_duration_is_blank():
    assert format_duration(None) == ""
