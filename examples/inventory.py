"""A tiny inventory: the code the example suite tests."""

from __future__ import annotations


class OutOfStock(Exception):
    pass


class Inventory:
    def __init__(self) -> None:
        self._stock: dict[str, int] = {}

    def add(self, item: str, quantity: int = 1) -> None:
        if quantity <= 0:
            raise ValueError("quantity must be positive")
        self._stock[item] = self._stock.get(item, 0) + quantity

    def remove(self, item: str, quantity: int = 1) -> None:
        available = self._stock.get(item, 0)
        if quantity > available:
            raise OutOfStock(item)
        self._stock[item] = available - quantity

    def count(self, item: str) -> int:
        return self._stock.get(item, 0)

    def total(self) -> int:
        # Bug on purpose: items removed down to zero still count once.
        return sum(max(quantity, 1) for quantity in self._stock.values())
