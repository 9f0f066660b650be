"""Which code made a record: the release and, in a git checkout, the commit."""

import subprocess

from hematovision import __version__, release


def test_outside_a_git_checkout_the_release_alone(monkeypatch):
    def no_git(*args, **kwargs):
        raise OSError("git: not found")

    monkeypatch.setattr(subprocess, "run", no_git)
    release.commit.cache_clear()
    try:
        assert release.commit() is None and release.app_version() == __version__
    finally:
        release.commit.cache_clear()


def test_in_a_checkout_the_commit_and_whether_files_differ_from_it(monkeypatch):
    answers = {"rev-parse": "be3ff57\n", "status": " M app.py\n"}

    def git(command, **kwargs):
        return subprocess.CompletedProcess(command, 0, stdout=answers[command[1]])

    monkeypatch.setattr(subprocess, "run", git)
    release.commit.cache_clear()
    try:
        assert release.app_version() == f"{__version__}+be3ff57+dirty"
        answers["status"] = ""
        release.commit.cache_clear()
        assert release.app_version() == f"{__version__}+be3ff57"
    finally:
        release.commit.cache_clear()
