"""Object keys of table dumps: readable for ordinary names, never shared by two distinct tables."""

from __future__ import annotations

import itertools

import pytest
from migsafe.backup import object_name, object_names
from migsafe.exceptions import InputError
from migsafe.identifiers import QualifiedName as Q


def test_ordinary_names_stay_readable() -> None:
    # Given / When / Then
    assert object_name(Q("public", "user_application_access"), ".dump.zst") == "public.user_application_access.dump.zst"
    assert object_name(Q("sales", "orders-2024"), ".dump") == "sales.orders-2024.dump"


def test_a_dot_inside_a_name_does_not_collide_with_the_schema_separator() -> None:
    # Given "s.x".t and s."x.t" (issue 9, item 4: both were s.x.t.dump.zst)
    a, b = Q("s.x", "t"), Q("s", "x.t")
    # When
    ka, kb = object_name(a, ".dump.zst"), object_name(b, ".dump.zst")
    # Then
    assert ka != kb
    assert (ka, kb) == ("s%2Ex.t.dump.zst", "s.x%2Et.dump.zst")


def test_distinct_tricky_names_never_share_a_key() -> None:
    # Given names built from the characters that were once folded together or are special in keys
    atoms = ["a", "A", ".", "_", "-", "%", "%2E", "/", " ", "é", "~", "$", "..", '"']
    parts = sorted({"".join(p) for n in (1, 2) for p in itertools.product(atoms, repeat=n)})
    tables = [Q(s, t) for s in parts[:40] for t in parts]  # all distinct
    # When
    keys = {object_name(t, ".dump.zst") for t in tables}
    # Then: one key per table, none with a path separator, none with a bare ".." segment
    assert len(keys) == len(tables)
    assert not any("/" in k for k in keys)


def test_upper_case_is_encoded_so_case_insensitive_file_systems_keep_tables_apart() -> None:
    assert object_name(Q("public", "Orders"), ".dump").lower() != object_name(Q("public", "orders"), ".dump")


def test_long_names_are_cut_to_a_safe_length_and_stay_distinct() -> None:
    # Given two 63-byte non-ASCII names differing in the last character (encoded, far past 255 bytes)
    a = Q("é" * 31 + "a", "ü" * 31 + "a")
    b = Q("é" * 31 + "a", "ü" * 31 + "b")
    # When
    ka, kb = object_name(a, ".dump.zst"), object_name(b, ".dump.zst")
    # Then
    assert ka != kb
    assert max(len(ka.encode()), len(kb.encode())) < 255


def test_a_table_listed_twice_is_refused_before_anything_is_written() -> None:
    with pytest.raises(InputError, match="listed twice"):
        object_names([Q("public", "users"), Q("public", "users")], ".dump.zst")


def test_keys_for_a_list_of_tables() -> None:
    names = object_names([Q("s.x", "t"), Q("s", "x.t")], ".dump.zst")
    assert sorted(names.values()) == ["s%2Ex.t.dump.zst", "s.x%2Et.dump.zst"]
