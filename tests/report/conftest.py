"""Fixtures of the report tests: one synthetic run, and its report written once."""

from __future__ import annotations

import copy

import pytest

from report.write import write_report
from tests.report.run_docs import RunDocs, Written, build_docs


@pytest.fixture(scope="module")
def base_docs() -> RunDocs:
    return build_docs()


@pytest.fixture
def docs(base_docs: RunDocs) -> RunDocs:
    return copy.deepcopy(base_docs)


@pytest.fixture(scope="module")
def written(base_docs: RunDocs, tmp_path_factory: pytest.TempPathFactory) -> Written:
    run = base_docs.write(tmp_path_factory.mktemp("report") / "run")
    files = write_report(run)
    return Written(run, files, files.html.read_text(encoding="utf-8"), base_docs)
