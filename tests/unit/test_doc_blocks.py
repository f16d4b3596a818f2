"""Finding the documented shell blocks, and the markers that skip one with a reason."""

from __future__ import annotations

import textwrap

import pytest

from tests.doc_blocks import (
    Block,
    DocBlockError,
    documented_blocks,
    header_blocks,
    markdown_blocks,
)
from tests.e2e.kit import REPO


def _md(text: str) -> list[Block]:
    return markdown_blocks(textwrap.dedent(text), "DOC.md")


def test_markdown_shell_fences_are_blocks_and_other_languages_are_not() -> None:
    blocks = _md(
        """\
        # Title

        ```sh
        ranvier up x.yaml -d
        curl ${URL}predict
        ```

        ```yaml
        kind: Axon
        ```

        ```bash
        echo two
        ```
        """
    )
    assert blocks == [
        Block("DOC.md", 4, "ranvier up x.yaml -d\ncurl ${URL}predict\n"),
        Block("DOC.md", 13, "echo two\n"),
    ]
    assert blocks[0].id == "DOC.md:4"


def test_a_marker_skips_the_next_block_with_its_reason() -> None:
    blocks = _md(
        """\
        <!-- docs-test: skip (runs the whole test suite) -->

        ```sh
        make test
        ```

        ```sh
        echo runs
        ```
        """
    )
    assert [(b.commands, b.skip) for b in blocks] == [
        ("make test\n", "runs the whole test suite"),
        ("echo runs\n", None),
    ]


def test_a_marker_may_wrap_over_lines() -> None:
    blocks = _md(
        """\
        <!-- docs-test: skip (trains for minutes;
             another test runs it) -->
        ```sh
        make demo
        ```
        """
    )
    assert [b.skip for b in blocks] == ["trains for minutes; another test runs it"]


def test_a_fence_inside_a_longer_fence_is_text() -> None:
    blocks = _md(
        """\
        ````markdown
        ```sh
        not a command
        ```
        ````
        """
    )
    assert blocks == []


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("<!-- docs-test: skip -->\n```sh\nx\n```\n", "not understood"),
        ("<!-- docs-test: skip () -->\n```sh\nx\n```\n", "not understood"),
        ("<!-- docs-test: run later -->\n```sh\nx\n```\n", "not understood"),
        ("<!-- docs-test: skip (why) -->\nprose\n```sh\nx\n```\n", "not followed by"),
        ("<!-- docs-test: skip (why) -->\n```yaml\nx: 1\n```\n", "before a yaml block"),
        ("text\n<!-- docs-test: skip (why) -->\n", "at the end"),
        ("<!-- docs-test: skip (why)\n```sh\nx\n```\n", "without its closing"),
        ("<!-- docs-test: skip (a) -->\n<!-- docs-test: skip (b) -->\n```sh\nx\n```\n", "another"),
    ],
)
def test_a_bad_or_dangling_marker_is_an_error_naming_the_line(text: str, error: str) -> None:
    with pytest.raises(DocBlockError, match=error) as caught:
        markdown_blocks(text, "DOC.md")
    assert str(caught.value).startswith("DOC.md:")


HEADER = """\
# What the example shows, in prose:
#
#   ranvier up examples/x/axon.yaml -d --until deployed
#   for i in $(seq 2); do
#     curl ${URL}send-feedback
#   done
#
# More prose, with `code` in it.
# docs-test: skip (trains for minutes)
#   ranvier watch axon x
apiVersion: ranvier.dev/v1alpha1
#   not in the header any more
"""


def test_an_axon_header_gives_its_indented_command_runs() -> None:
    assert header_blocks(HEADER, "axon.yaml") == [
        Block(
            "axon.yaml",
            3,
            "ranvier up examples/x/axon.yaml -d --until deployed\n"
            "for i in $(seq 2); do\n  curl ${URL}send-feedback\ndone\n",
        ),
        Block("axon.yaml", 10, "ranvier watch axon x\n", "trains for minutes"),
    ]


def test_a_header_marker_that_marks_nothing_is_an_error() -> None:
    with pytest.raises(DocBlockError, match=r"axon.yaml:1: .*not followed by"):
        header_blocks("# docs-test: skip (why)\n# prose\n#   cmd\n", "axon.yaml")
    with pytest.raises(DocBlockError, match=r"axon.yaml:2: .*at the end"):
        header_blocks("# prose\n# docs-test: skip (why)\nkind: Axon\n", "axon.yaml")


def test_the_repository_documents_blocks_and_every_marker_is_well_formed() -> None:
    blocks = documented_blocks(REPO)
    files = {b.path for b in blocks}
    assert {"README.md", "examples/01-quickstart/axon.yaml"} <= files
    assert all(b.commands.strip() for b in blocks)
    assert all(b.skip is None or b.skip.strip() for b in blocks)
