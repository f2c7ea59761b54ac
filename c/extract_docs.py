"""Extract the XML documentation embedded in a module's C source, as Asterisk's build does.

Out-of-tree modules are not in core-en_US.xml; Asterisk also reads
documentation/thirdparty/*-en_US.xml, which is what this writes.
"""

import re
import sys
from pathlib import Path


def block(kind: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The definition of the `kind` fields, and the marker of a place that gets a copy."""
    return (
        re.compile(
            rf"[ \t]*<!-- convai: {kind} fields .*?-->\n(.*?)"
            rf"[ \t]*<!-- convai: end of the {kind} fields -->\n",
            re.S,
        ),
        re.compile(rf"[ \t]*<!-- convai: the {kind} fields -->\n"),
    )


# common: every ElevenLabsConvAI* event starts with them; transfer: every
# ElevenLabsConvAITransfer* event has them after the common ones.
BLOCKS = {kind: block(kind) for kind in ("common", "transfer")}


def shared_fields(body: str, src: str) -> str:
    """Fields several events share are written once in the source; each event that says so
    gets a copy (an xi:include would do, but Asterisk 20 drops a third-party file that has
    one)."""
    for kind, (define, here) in BLOCKS.items():
        m = define.search(body)
        if m is None:
            if here.search(body):
                sys.exit(f"{src}: 'convai: the {kind} fields' without their definition")
            continue
        fields = m.group(1)
        body = body[: m.start()] + fields + body[m.end() :]
        body = fields.join(here.split(body))
    return body


def main(src: str, out: str) -> None:
    text = Path(src).read_text(encoding="utf-8")
    module = Path(src).stem
    docs = re.findall(r"/\*\*\* DOCUMENTATION\n(.*?)\s*\*\*\*/", text, re.S)
    level = re.search(r"<support_level>(\w+)</support_level>", text)
    if not docs:
        sys.exit(f"{src}: no DOCUMENTATION block")
    body = shared_fields("\n".join(docs), src)
    if "<xi:include" in body:
        # Asterisk 22 resolves an include into core-en_US.xml from a third-party file; Asterisk
        # 20 drops the whole file, and `core show application` says "Not available".
        sys.exit(f"{src}: no xi:include in a third-party module's docs (Asterisk 20 drops them)")
    Path(out).write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE docs SYSTEM "appdocsxml.dtd">\n'
        '<docs xmlns:xi="http://www.w3.org/2001/XInclude">\n'
        f'<module language="en_US" name="{module}">\n'
        f"\t<support_level>{level.group(1) if level else 'extended'}</support_level>\n"
        "</module>\n"
        f"{body}\n</docs>\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
