"""How the staging loader splits pg_restore's output: SQL as lines, COPY rows as chunks."""

from __future__ import annotations

import io

import pytest
from migsafe.staging import _Lines, _Rewriter


def _read_all(script: bytes, buffer_size: int) -> tuple[list[bytes], list[bytes]]:
    """(lines read as SQL, COPY data forwarded) for a script read through a small buffer."""
    source = _Lines(io.BufferedReader(io.BytesIO(script), buffer_size=buffer_size))
    lines: list[bytes] = []
    data: list[bytes] = []
    in_copy = False
    while line := source.readline():
        if in_copy:
            in_copy = False
            source.unread(line)
            source.copy_rows(data.append)
            continue
        lines.append(line)
        in_copy = line.startswith(b"COPY ")
    return lines, data


@pytest.mark.parametrize("buffer_size", [1, 2, 3, 5, 7, 64, 1 << 16])
def test_copy_rows_end_exactly_at_their_marker_wherever_chunks_are_cut(buffer_size: int) -> None:
    # Given a script with an empty table, a table whose rows hold backslashes, and SQL after each
    rows = b"".join(b"%d\tline \\\\. with \\\\ and \\\\.\n" % i for i in range(50))
    script = (b"SET x = 1;\nCOPY public.empty (id) FROM stdin;\n\\.\nSELECT 1;\n"
              b"COPY public.t (id, note) FROM stdin;\n" + rows + b"\\.\n\nSELECT pg_catalog.setval('public.s', 5);\n")

    # When it is read through buffers of any size
    lines, data = _read_all(script, buffer_size)

    # Then every row reached COPY whole, each marker ended its table, and the SQL stayed lines
    assert b"".join(data) == b"\\.\n" + rows + b"\\.\n"
    assert lines == [b"SET x = 1;\n", b"COPY public.empty (id) FROM stdin;\n", b"SELECT 1;\n",
                     b"COPY public.t (id, note) FROM stdin;\n", b"\n",
                     b"SELECT pg_catalog.setval('public.s', 5);\n"]


def test_rewriting_touches_only_whole_qualified_names() -> None:
    # Given names of the restore mapped to a staging schema
    rewrite = _Rewriter({b"public.users": b"migsafe_staging_1.users",
                         b'"a.b"."Parent Table"': b'migsafe_staging_1."Parent Table"'})

    # When SQL naming them, and names that only look alike, is rewritten
    out = rewrite(b"ALTER TABLE ONLY public.users ADD CONSTRAINT f FOREIGN KEY (p) REFERENCES "
                  b'"a.b"."Parent Table"(id), public.users_id_seq, xpublic.users, "public.users";\n')

    # Then only the exact qualified names changed
    assert out == (b"ALTER TABLE ONLY migsafe_staging_1.users ADD CONSTRAINT f FOREIGN KEY (p) REFERENCES "
                   b'migsafe_staging_1."Parent Table"(id), public.users_id_seq, xpublic.users, "public.users";\n')
