"""Removing run directories, including what a snippet made hard to remove."""
from __future__ import annotations

import os
import shutil
from typing import Any, Callable


def remove_tree(path: str) -> None:
    """rmtree that also removes what a snippet made unreadable (chmod 000 dirs)."""
    def make_writable_and_retry(function: Callable[[str], Any], failed: str, _: Any) -> None:
        try:
            os.chmod(os.path.dirname(failed), 0o700)
            os.chmod(failed, 0o700)
            function(failed)
        except OSError:
            pass
    shutil.rmtree(path, onerror=make_writable_and_retry)
