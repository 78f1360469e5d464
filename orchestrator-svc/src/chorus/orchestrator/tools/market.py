"""Deterministic, offline market data for the `crypto-analysts` template.

The figures are synthetic: a seeded random walk per symbol (seed = SHA-256 of the symbol),
the same on every machine and every call, so runs and tests are reproducible without a
network. Days are counted back from "today" (day 0) instead of calendar dates for the same
reason. Nothing here is investment advice or real market data.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import statistics

_SYMBOL = re.compile(r"^[A-Z0-9]{1,10}$")
_BASE_PRICES = {
    "BTC": 64_000.0,
    "ETH": 3_100.0,
    "SOL": 145.0,
    "BNB": 560.0,
    "XRP": 0.52,
    "ADA": 0.45,
    "DOGE": 0.13,
    "DOT": 6.8,
    "AVAX": 28.0,
    "LINK": 14.0,
}
MAX_DAYS = 365
"""Longest price history returned."""


def _symbol(symbol: str) -> str:
    norm = symbol.strip().upper().removesuffix("-USD").removesuffix("USD") or symbol.upper()
    if not _SYMBOL.match(norm):
        raise ValueError(f"invalid symbol {symbol!r}: use a ticker such as BTC or ETH")
    return norm


def _rng(symbol: str) -> random.Random:
    digest = hashlib.sha256(symbol.encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def closes(symbol: str, days: int = 30) -> list[float]:
    """Daily closing prices in USD, oldest first, the last one being today's.

    Raises:
        ValueError: a malformed symbol or `days` outside 2..365.
    """
    sym = _symbol(symbol)
    if not 2 <= days <= MAX_DAYS:
        raise ValueError(f"days must be 2..{MAX_DAYS}")
    rng = _rng(sym)
    base = _BASE_PRICES.get(sym) or round(10 ** rng.uniform(-2, 3), 4)
    drift, vol = rng.uniform(-0.004, 0.006), rng.uniform(0.015, 0.05)
    walk = [base]
    for _ in range(MAX_DAYS - 1):  # full year, so `days` only chooses the window
        walk.append(walk[-1] * (1 + rng.gauss(drift, vol)))
    scale = base / walk[-1]
    return [round(p * scale, 6) for p in walk[-days:]]


def _rsi(prices: list[float], period: int = 14) -> float:
    changes = [b - a for a, b in itertools.pairwise(prices)][-period:]
    gains = sum(c for c in changes if c > 0) / period
    losses = sum(-c for c in changes if c < 0) / period
    return 100.0 if losses == 0 else round(100 - 100 / (1 + gains / losses), 2)


def market_data(symbol: str) -> str:
    """Today's synthetic market snapshot of a crypto asset (e.g. `BTC`) as JSON: price in USD,
    24 h and 7 d change in percent, 24 h volume and market capitalisation in USD."""
    sym = _symbol(symbol)
    prices = closes(sym, 8)
    rng = _rng(sym + ":volume")
    price = prices[-1]
    supply = rng.uniform(1e7, 5e10) if sym not in ("BTC",) else 19_700_000.0
    return json.dumps(
        {
            "symbol": sym,
            "price_usd": price,
            "change_24h_pct": round((prices[-1] / prices[-2] - 1) * 100, 2),
            "change_7d_pct": round((prices[-1] / prices[0] - 1) * 100, 2),
            "volume_24h_usd": round(price * supply * rng.uniform(0.01, 0.08), 2),
            "market_cap_usd": round(price * supply, 2),
            "source": "chorus synthetic market data (deterministic, offline)",
        }
    )


def technical_indicators(symbol: str, days: int = 30) -> str:
    """Technical indicators of a crypto asset over the last `days` days (7..365) as JSON:
    simple moving averages (7 and `days`), RSI(14), daily volatility, high, low and trend."""
    if not 15 <= days <= MAX_DAYS:
        raise ValueError(f"days must be 15..{MAX_DAYS}")
    prices = closes(symbol, days)
    returns = [b / a - 1 for a, b in itertools.pairwise(prices)]
    sma_short, sma_long = statistics.fmean(prices[-7:]), statistics.fmean(prices)
    return json.dumps(
        {
            "symbol": _symbol(symbol),
            "days": days,
            "last_close_usd": prices[-1],
            "sma_7": round(sma_short, 6),
            f"sma_{days}": round(sma_long, 6),
            "rsi_14": _rsi(prices),
            "volatility_daily_pct": round(statistics.pstdev(returns) * 100, 3),
            "high_usd": max(prices),
            "low_usd": min(prices),
            "trend": "up" if sma_short > sma_long else "down",
        }
    )


def chart_name(symbol: str, days: int = 30) -> str:
    """The artifact name of a price chart: `BTC-30d.svg`.

    Raises:
        ValueError: a malformed symbol.
    """
    return f"{_symbol(symbol)}-{days}d.svg"


def price_chart_svg(symbol: str, days: int = 30, width: int = 640, height: int = 240) -> bytes:
    """An SVG line chart of the last `days` closes (the `price_chart` tool's artifact)."""
    sym = _symbol(symbol)
    prices = closes(sym, days)
    lo, hi = min(prices), max(prices)
    span = (hi - lo) or 1.0
    pad = 24
    step = (width - 2 * pad) / (len(prices) - 1)
    points = " ".join(
        f"{pad + i * step:.1f},{height - pad - (p - lo) / span * (height - 2 * pad):.1f}"
        for i, p in enumerate(prices)
    )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="{pad}" y="16" font-family="sans-serif" font-size="12">'
        f"{sym}/USD, last {days} days (synthetic) — low {lo:g}, high {hi:g}</text>"
        f'<polyline fill="none" stroke="#2563eb" stroke-width="2" points="{points}"/>'
        "</svg>"
    )
    return svg.encode()
