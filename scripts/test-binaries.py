#!/usr/bin/env python3
"""The workspace's test binaries, from the JSON of one
`cargo test --workspace --no-run --message-format=json...` (on stdin).

Prints one line per binary: PACKAGE TARGET EXECUTABLE PACKAGE_DIR, where
TARGET is `lib` for a library's unit tests and the test's name otherwise.

Why: `cargo test -p PACKAGE` resolves the features of PACKAGE alone, which
differ from the workspace's unified ones, so it rebuilds hundreds of
dependencies (on a cold CI clone, half an hour). Running the binaries the
workspace build made, from the package's directory as cargo does, rebuilds
nothing.
"""
import json
import os
import sys


def main() -> None:
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg.get("profile", {}).get("test"):
            continue
        if not msg["package_id"].startswith("path+"):
            continue
        url, fragment = msg["package_id"].rsplit("#", 1)
        # `#name@version`, or `#version` where the name is the folder's.
        package = fragment.split("@", 1)[0] if "@" in fragment else url.rstrip("/").rsplit("/", 1)[1]
        kinds = msg["target"]["kind"]
        target = "lib" if "lib" in kinds or "rlib" in kinds else msg["target"]["name"]
        if "bin" in kinds:
            target = "bin:" + msg["target"]["name"]
        package_dir = os.path.dirname(msg["manifest_path"])
        print(package, target, msg["executable"], package_dir)


if __name__ == "__main__":
    main()
