"""Extract the XML documentation embedded in a module's C source, as Asterisk's build does.

Out-of-tree modules are not in core-en_US.xml; Asterisk also reads
documentation/thirdparty/*-en_US.xml, which is what this writes.
"""

import re
import sys
from pathlib import Path


def main(src: str, out: str) -> None:
    text = Path(src).read_text(encoding="utf-8")
    module = Path(src).stem
    docs = re.findall(r"/\*\*\* DOCUMENTATION\n(.*?)\s*\*\*\*/", text, re.S)
    level = re.search(r"<support_level>(\w+)</support_level>", text)
    if not docs:
        sys.exit(f"{src}: no DOCUMENTATION block")
    body = "\n".join(docs)
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
