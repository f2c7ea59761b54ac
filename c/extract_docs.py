"""Extract the XML documentation embedded in a module's C source, as Asterisk's build does.

Out-of-tree modules are not in core-en_US.xml; Asterisk also reads
documentation/thirdparty/*-en_US.xml, which is what this writes.
"""

import re
import sys
from pathlib import Path

COMMON = re.compile(
    r"[ \t]*<!-- convai: common fields .*?-->\n(.*?)"
    r"[ \t]*<!-- convai: end of the common fields -->\n",
    re.S,
)
COMMON_HERE = re.compile(r"[ \t]*<!-- convai: the common fields -->\n")


def common_fields(body: str, src: str) -> str:
    """The fields every ElevenLabsConvAI* event starts with are written once in the source;
    each event that says so gets a copy (an xi:include would do, but Asterisk 20 drops a
    third-party file that has one)."""
    m = COMMON.search(body)
    if m is None:
        if COMMON_HERE.search(body):
            sys.exit(f"{src}: 'convai: the common fields' without their definition")
        return body
    fields = m.group(1)
    body = body[: m.start()] + fields + body[m.end() :]
    return COMMON_HERE.sub(lambda _: fields, body)


def main(src: str, out: str) -> None:
    text = Path(src).read_text(encoding="utf-8")
    module = Path(src).stem
    docs = re.findall(r"/\*\*\* DOCUMENTATION\n(.*?)\s*\*\*\*/", text, re.S)
    level = re.search(r"<support_level>(\w+)</support_level>", text)
    if not docs:
        sys.exit(f"{src}: no DOCUMENTATION block")
    body = common_fields("\n".join(docs), src)
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
