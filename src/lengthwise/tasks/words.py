"""Keys and values for the tasks: adjective-noun words, digit strings, hex keys, variable names.

The word lists are our own. Every generator draws one item at a time and skips repeats, so the first k
items of a stream do not depend on how many are asked for (the length search relies on that).
"""
from __future__ import annotations

import random
import string
from typing import Callable

ADJECTIVES = tuple("""
able amber ancient angry arctic ashen autumn bitter black blazing bold brave brief bright brisk broken
bronze busy calm careful cheerful chilly clever cloudy coastal copper cosmic crimson crisp curious dainty
damp dapper daring dark dusty eager early earnest electric elegant emerald empty fancy fearless fierce
flat fluffy foggy fragile frosty gentle giant gilded glassy gleaming golden graceful grand grassy gray
green happy hardy hasty hidden hollow humble icy idle indigo ivory jagged jolly keen kind lanky lazy
lively lonely loud lucky lunar marble mellow mighty misty modern muddy narrow neat nimble noble noisy
oaken odd olive orange pale patient plain polished proud purple quick quiet rapid rare restless rocky
rosy royal rusty sandy scarlet secret serene shady sharp shiny silent silver simple sleepy slender
smoky snowy solar sour spare speedy spotted steady stormy sturdy sunny swift tall tame tender tidy
tiny tired twin upper urban velvet violet vivid wandering warm wary wild windy wise wooden young zealous
""".split())

NOUNS = tuple("""
acorn anchor antler apple arch arrow atlas badger bagel ballad banner barn basket beacon beetle bell
bench berry bison blanket boat bottle boulder bridge brook bucket cabin cactus camel candle canyon
carpet castle cedar chapel cherry circle cliff clock cloud comet compass coral cottage crane crater
crown cup daisy desert dolphin dragon drum eagle ember engine falcon feather fern ferry fiddle flame
forest fountain fox garden garnet geyser glacier goose granite harbor harp hawk hazel helmet heron
hill hive island jacket jaguar kettle kite ladder lagoon lantern lemon lily lizard lobster locket
maple meadow mirror mitten moose mountain needle nest oasis ocean otter owl paddle palace panther
parrot pebble pepper pillar pine planet pocket pond puppet quarry quill rabbit raven reef ribbon
river robin rocket saddle salmon sparrow spruce squirrel statue stone summit swan teapot thimble
thistle tiger timber tower trumpet tulip tunnel turtle valley violin walnut wagon walrus willow window
""".split())


def distinct(rng: random.Random, draw: Callable[[random.Random], str], k: int, avoid=()) -> list[str]:
    """k distinct draws (also distinct from `avoid`), prefix-stable in k."""
    seen, out = set(avoid), []
    while len(out) < k:
        x = draw(rng)
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def word(rng: random.Random) -> str:
    """An adjective-noun key such as "amber-falcon", as RULER's word keys."""
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def number(digits: int) -> Callable[[random.Random], str]:
    return lambda rng: str(rng.randrange(10 ** (digits - 1), 10 ** digits))


def hex_key(rng: random.Random) -> str:
    """A UUID-like key, "3f9c2e1a-7b4d": the first two groups of a UUID, to keep answers short."""
    h = f"{rng.getrandbits(48):012x}"
    return f"{h[:8]}-{h[8:]}"


def letters(n: int, alphabet: str = string.ascii_uppercase) -> Callable[[random.Random], str]:
    return lambda rng: "".join(rng.choice(alphabet) for _ in range(n))


N_WORDS = len(ADJECTIVES) * len(NOUNS)
