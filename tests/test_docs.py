"""The documentation stays true to the code: docs/flags.md is what the parser generates, every
relative link in README.md and docs/*.md names a file that exists, and the README stays a front
door."""

import glob
import os
import re
import subprocess
import sys

import pytest

from scripts import flags_doc
from scripts.model_table import format_rows
from tests.helpers import ROOT
from tests.helpers.model_zoo import profiled, variant_params

STALE = "docs/flags.md is stale: run python scripts/flags_doc.py --write"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _pages():
    return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def test_flags_doc_is_current():
    with open(os.path.join(ROOT, flags_doc.DOC_PATH), encoding="utf-8") as f:
        assert f.read() == flags_doc.generate(), STALE


def test_flags_doc_lists_every_flag_with_group_and_default():
    from runtime.flags import build_parser

    text = flags_doc.generate()
    parser = build_parser()
    for action in parser.actions():
        for option in action.option_strings:
            if option not in ("-h", "--help"):
                assert f"`{option}`" in text, option
    assert "\n## precision and compilation\n" in text
    assert "| `--mode` | `train_and_eval` | train, train_and_eval," in text
    assert "| `--use_amp` / `--no-use_amp` | False |" in text
    assert ROOT not in text and os.path.expanduser("~") not in text


def test_flags_doc_sees_a_new_flag():
    """A parser that gained a flag renders a page that no longer matches docs/flags.md."""
    from runtime.flags import build_parser

    parser = build_parser()
    parser.add_argument("--brand_new_flag", default=3, help="added after the page was written")
    text = flags_doc.render(parser)
    assert "| `--brand_new_flag` | `3` |  | added after the page was written |" in text
    with open(os.path.join(ROOT, flags_doc.DOC_PATH), encoding="utf-8") as f:
        assert f.read() != text


def test_flags_doc_script_prints_the_page():
    out = subprocess.run(
        [sys.executable, "scripts/flags_doc.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == flags_doc.generate()


def _anchors(path):
    """GitHub's heading anchors of a markdown file (lower case, punctuation dropped, spaces to -)."""
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
    return {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", text, flags=re.M)
    }


def test_anchor_slugs_follow_github():
    assert _anchors(os.path.join(ROOT, "docs", "evaluation.md")) >= {
        "benchmarks---mode-training_benchmark---mode-inference_benchmark",
        "logs-and-plots",
    }


def test_relative_links_point_to_existing_files_and_headings():
    broken = []
    for page in _pages():
        with open(page, encoding="utf-8") as f:
            text = f.read()
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = os.path.normpath(os.path.join(os.path.dirname(page), file)) if file else page
            if not os.path.exists(path):
                broken.append(f"{os.path.relpath(page, ROOT)} -> {target}")
            elif anchor and path.endswith(".md") and anchor not in _anchors(path):
                broken.append(f"{os.path.relpath(page, ROOT)} -> {target} (no such heading)")
    assert not broken, "broken links: " + ", ".join(sorted(set(broken)))


def test_readme_is_a_front_door():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_test_command_is_what_ci_runs():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    command = (
        "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements-dev.txt"
        " && python -m pytest -q -n 2"
    )
    assert command in readme
    for part in (
        "python3 -m venv .venv",
        ". .venv/bin/activate",
        "pip install -q -r requirements-dev.txt",
        "python -m pytest -q -n 2",
    ):
        assert part in ci, part


@pytest.mark.parametrize(
    "variant",
    variant_params(
        ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"]
        + ["v2-b0", "v2-b1", "v2-b2", "v2-b3", "s", "m", "l", "xl"]
        + ["lite0", "lite1", "lite2", "lite3", "lite4"]
    ),
)
def test_model_tables_are_current(variant):
    """The model table in README.md and docs/models.md is scripts/model_table.py's output
    (rows are built once per session and shared with tests/scripts/test_model_table.py)."""
    row = format_rows([profiled(variant)], "markdown").splitlines()[-1]
    for page in ("README.md", os.path.join("docs", "models.md")):
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            assert row in f.read().splitlines(), (
                f"{page}: model table is stale ({row}): paste the output of "
                "python scripts/model_table.py --format markdown"
            )


# An issue number means nothing to a reader of the docs (issues are closed, renumbered, or live
# in another tracker); another project's issue (keras-team/keras#20585) is a citation.
ISSUE_NUMBER = re.compile(r"\bissues? ?#?\d+\b|(?<![\w/.-])#\d+(?![\w-])", re.IGNORECASE)


def test_no_page_names_an_issue_number():
    named = []
    for page in _pages():
        with open(page, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                named += [
                    f"{os.path.relpath(page, ROOT)}:{number}: {m[0]}"
                    for m in ISSUE_NUMBER.finditer(line)
                ]
    assert not named, "say what the code does instead: " + "; ".join(named)


@pytest.mark.parametrize(
    "text", ["(issue #10)", "issue 20's next step", "(#7)", "see #12", "Issues 3"]
)
def test_issue_number_pattern_catches(text):
    assert ISSUE_NUMBER.search(text)


@pytest.mark.parametrize(
    "text",
    [
        "keras-team/keras#20585",
        "`#SBATCH --signal`",
        "[x](finetune.md#3-the-weights)",
        "[section 8](#8-an-imagenet-model-as-it-is)",
    ],
)
def test_issue_number_pattern_spares_citations_and_anchors(text):
    assert not ISSUE_NUMBER.search(text)
