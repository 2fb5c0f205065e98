"""compactify.registry.Registry: what a table of ops or targets promises every caller."""

from __future__ import annotations

import pytest

from compactify.registry import DuplicateRegistration, Registry


def test_a_key_registered_twice_is_refused_and_the_first_entry_kept():
    table = Registry("widget")

    @table.register("a")
    def first():
        pass

    with pytest.raises(DuplicateRegistration, match=r"widget 'a' is registered twice: .*first and .*second"):
        @table.register("a")
        def second():
            pass

    assert table["a"] is first and len(table) == 1


def test_one_entry_under_several_keys_is_found_by_each():
    table = Registry("widget")

    @table.register("a", "b")
    def handler():
        pass

    assert table["a"] is table["b"] is handler
    assert "a" in table and "c" not in table
    assert table.get("c") is None and table.get("c", handler) is handler
    assert table.keys() == ["a", "b"] and list(table) == ["a", "b"]
    assert table.items() == [("a", handler), ("b", handler)]


def test_an_unknown_key_names_the_table_and_what_it_knows():
    table = Registry("widget")
    table.add("a", object())
    table.add("b", object())
    with pytest.raises(KeyError, match="no widget 'c'; known: a, b"):
        table["c"]


def test_register_needs_a_key():
    with pytest.raises(TypeError, match="widget"):
        Registry("widget").register()
