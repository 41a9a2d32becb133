"""Turn the collection Postman's importer makes from /openapi.json into what a user sends.

That is: the key set, a file chosen for /run-file, and a test on every request (it must succeed and, for a run,
print the script's output).

Nothing else is changed: every other value is what the import put there.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

TEST = """
pm.test("succeeds as imported", () => pm.expect(pm.response.code).to.be.oneOf([200, 202]));
if (pm.request.url.getPath().startsWith("/run-")) {
    pm.test("runs the script", () => pm.expect(pm.response.text()).to.include("hello world"));
}
"""


def requests_in(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield from requests_in(item["item"]) if "item" in item else [item]


def main(collection_path: str, script_path: str) -> None:
    with open(collection_path) as f:
        collection = json.load(f)
    chosen = 0
    for item in requests_in(collection["item"]):
        for field in item["request"].get("body", {}).get("formdata", []):
            if field.get("type") == "file":  # what the user picks in the form
                field["src"], chosen = script_path, chosen + 1
    if chosen != 1:
        sys.exit(f"expected one file field in the imported collection, found {chosen}")
    collection["event"] = [{"listen": "test", "script": {"type": "text/javascript", "exec": TEST.splitlines()}}]
    with open(collection_path, "w") as f:
        json.dump(collection, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
