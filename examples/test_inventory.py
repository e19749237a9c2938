import sys

import pytest
from inventory import Inventory, OutOfStock


@pytest.fixture
def inventory():
    return Inventory()


def test_add_and_count(inventory):
    inventory.add("apple", 3)
    assert inventory.count("apple") == 3


@pytest.mark.parametrize(("quantity", "expected"), [(1, 1), (5, 5), (100, 100)])
def test_add_quantities(inventory, quantity, expected):
    inventory.add("pear", quantity)
    assert inventory.count("pear") == expected


@pytest.mark.parametrize("quantity", [0, -1])
def test_add_rejects_non_positive(inventory, quantity):
    with pytest.raises(ValueError):
        inventory.add("plum", quantity)


def test_remove_more_than_stock(inventory):
    inventory.add("fig")
    with pytest.raises(OutOfStock):
        inventory.remove("fig", 2)


def test_total_after_removing_everything(inventory):
    inventory.add("kiwi", 2)
    inventory.remove("kiwi", 2)
    assert inventory.total() == 0  # fails: the bug in Inventory.total


@pytest.mark.skipif(sys.platform != "win32", reason="Windows-only path handling")
def test_windows_paths():
    pass
