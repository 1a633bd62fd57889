"""scripts/demo.py: the demo fails when the served slice disagrees with in-process scoring."""

from tests.script_modules import load_script

demo = load_script("demo")


def served(errors: int = 0, difference: float = 0.0, calls: int = 200) -> dict:
    return {"calls": calls, "errors": errors, "max_abs_score_difference_vs_in_process": difference}


def test_a_served_slice_that_matches_in_process_scoring_has_no_problems():
    assert demo.serving_problems({"http": served(), "grpc": served(difference=1e-7)}) == []


def test_served_errors_and_score_differences_are_problems_naming_the_protocol():
    problems = demo.serving_problems({"http": served(errors=3), "grpc": served(difference=0.02)})

    assert problems[0] == "http: 3 of 200 messages got an error"
    assert problems[1].startswith("grpc: a served score differs from in-process scoring by 0.02")
    assert len(problems) == 2
