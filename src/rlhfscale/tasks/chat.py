"""The preference ("chat") task: open-domain chat with a hidden gold rater, in miniature.

A prompt asks for a short list of words meeting several soft requirements, e.g.
"list 4 words starting with b, in alphabetical order, no repeats\n"; a response is one word per
line. The gold rater (`ChatTask.score`, hidden from the reward model, which only sees preference
pairs drawn from it) gives partial credit per requirement, so responses form a quality spectrum,
as in the gold-RM / proxy-RM set-up of Gao et al. 2022. `rate_pair` simulates noisy human raters
(Bradley–Terry on the gold scores) and `corrupt` degrades a perfect response by a chosen amount,
giving responses of varied quality without a trained policy.

Requirements of a request: known word, first letter, word count, and optionally order
(alphabetical / reverse), no repeats and a maximum word length. Each gets a credit in [0, 1]
counted over max(n, k) word slots (n words given, k requested), so missing and surplus words cost
credit; the score is the weighted mean of the credits (0 for an empty response).
"""

from __future__ import annotations

import functools
import hashlib
import random
import string
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from rlhfscale.tasks.base import Example
from rlhfscale.tasks.jsonl import PreferencePair

WORDS: tuple[str, ...] = tuple(
    """
    able acid act add age ago aid aim air all alone also and angle angry animal ant any apple area
    arm army art ask atom aunt away axe baby back bad bag bake ball band bank bar base bat bath bean
    bear beat bed bee beef bell belt bench best big bike bird bit bite black blade blue boat body
    boil bone book boot born boss both bowl box boy brain bread brick bridge bring brown brush bus
    busy but butter buy cab cake call calm camp can candle cap car card care carry cart case cat
    cause cell chain chair chalk cheap check cheese chest chief child chin city clay clean clear
    climb clock cloth cloud coal coat coin cold color comb come cook cool copy corn cost cotton cow
    crab crop cross crowd cry cup curve cut dad damp dance dark date day dead deal dear debt deep
    deer desk dial dig dinner dirt dish dog doll door dot down draw dream dress drink drive drop
    drum dry duck dust each eager ear early earth east easy eat edge egg eight elbow end enemy enjoy
    enter equal error even event every exact exit eye face fact fail fair fall false fame far farm
    fast fat fear feast feed feel fence few field fig fight film find fine finger fire firm fish
    fist five flag flame flat floor flour flower fly fog fold food foot force fork form fox frame
    free fresh friend frog front fruit full fun fur game gap garden gas gate gift girl give glad
    glass glove glue goal goat gold good grain grape grass gray great green grip ground group grow
    guard guess guide gun hair half hall hand hang happy hard hat hate have head heap hear heart
    heat heavy help hen herb hero hide high hill hint hold hole home honey hook hope horn horse host
    hot hour house hug huge human hunt hurry hut ice icy idea idle inch ink inn input iron island
    issue item ivory jacket jam jar jaw jelly jet jewel job join joke joy judge jug juice jump
    jungle just keen keep kettle key kick kid kind king kiss kit kite knee knife knock know label
    lace lake lamp land large last late laugh lawn lazy lead leaf lean leg lemon less letter lid
    life lift light like lily limb line lion lip list live load loaf lock long loose lost loud love
    low luck lung mad mail main make male man map mark market mask mass mat meal meat melon metal
    milk mind mine mint miss mix model money monkey month moon more moss most mother motor mouse
    mouth move mud mug music nail name narrow near neat neck need needle nest net new news next nice
    night nine noble nod noise none noon nose note novel now number nurse nut oak oar oat ocean odd
    offer office oil old olive once one onion open orange order oven over owl own pack page pail
    paint pair pan paper park part party past paste path paw pay pea peach pear pen pencil pet piano
    pick pie piece pig pin pink pipe place plan plant plate play plum pocket point pole pond pool
    poor pot potato powder power press price print prize pull pump pupil purple push put queen quick
    quiet quilt quite quiz rabbit race rain range rat raw ray reach read ready red rest rice rich
    ride right ring ripe river road rock roof room root rope rose rough round row rub rule run rust
    sad safe sail salt same sand save saw say scale school sea seat seed self sell send sense shade
    shake shape sharp sheep shelf shell ship shirt shoe shop short show shut sick side sign silk
    silver simple sing sink sister sit size skin skirt sky sleep slip slow small smell smile smoke
    snake snow soap sock soft soil song soon sort sound soup south space spoon spring square stamp
    star start steam steel stem step stick still stone stop store storm story straw street sugar
    summer sun swim table tail take talk tall tame tank tap taste tax tea teach team tear teeth tell
    ten tent test thick thin thing thumb ticket tide tidy tie tiger time tin tiny tip tired toe tone
    tongue tool tooth top touch town toy trade train tray tree trick trip truck true trust try tube
    turn twin ugly uncle under unit until upper urge use usual valley value van vase vast veil verb
    very vest view violin visit voice vote wage wait walk wall want war warm wash waste watch water
    wave wax way weak wear week weigh well west wet whale wheat wheel whip white wide wife wild will
    win wind window wine wing winter wire wise wish wolf woman wood wool word work world worm wrist
    write yard yarn year yeast yell yellow yes yet young youth zebra zero zinc zone zoo
""".split()
)
WORD_SET = frozenset(WORDS)
MAX_WORDS = 6  # longest list a request can ask for: 6 words of <= 6 letters fit in ~40 characters
ORDERS = ("any", "alphabetical", "reverse")
MAX_LENS = (None, 4, 5)
TEST_FRACTION = 0.2
WEIGHTS = {"word": 1.0, "letter": 2.0, "count": 1.0, "order": 1.0, "unique": 1.0, "max_len": 1.0}

# Surface phrasings of the same request (the prompt-diversity axis): a head and one clause per
# optional requirement, appended in the order order, unique, max_len.
TEMPLATES: tuple[dict[str, str], ...] = (
    {"head": "list {count} words starting with {letter}", "alphabetical": ", in alphabetical order",
     "reverse": ", in reverse alphabetical order", "unique": ", no repeats",
     "max_len": ", each at most {max_len} letters"},
    {"head": "give {count} words that begin with {letter}", "alphabetical": ", sorted a to z",
     "reverse": ", sorted z to a", "unique": ", all different", "max_len": ", max {max_len} letters each"},
    {"head": "name {count} {letter}-words", "alphabetical": " in abc order",
     "reverse": " in reverse abc order", "unique": " without repeating",
     "max_len": " of up to {max_len} letters"},
    {"head": "{count} words, first letter {letter}", "alphabetical": "; ascending",
     "reverse": "; descending", "unique": "; distinct", "max_len": "; length <= {max_len}"},
    {"head": "write {count} words beginning with '{letter}'", "alphabetical": ", alphabetized",
     "reverse": ", reverse alphabetized", "unique": ", none twice",
     "max_len": ", no longer than {max_len} letters"},
    {"head": "words starting with {letter}: {count} of them", "alphabetical": ", a-z",
     "reverse": ", z-a", "unique": ", unique", "max_len": ", short (<= {max_len})"},
    {"head": "i need {count} words that start with {letter}", "alphabetical": " in dictionary order",
     "reverse": " in backward dictionary order", "unique": ", each used once",
     "max_len": ", at most {max_len} characters"},
    {"head": "{letter} words x{count}", "alphabetical": ", sorted", "reverse": ", reverse sorted",
     "unique": ", no dupes", "max_len": ", len<={max_len}"},
)


@dataclass(frozen=True)
class Request:
    """What a prompt asks for, independent of its phrasing."""

    letter: str
    count: int
    order: str  # one of ORDERS
    unique: bool
    max_len: int | None

    def candidates(self) -> tuple[str, ...]:
        """The known words that meet the per-word requirements (letter, length)."""
        return _candidates(self.letter, self.max_len)

    def split(self) -> str:
        """The request's split: "test" for a fixed hashed fifth of requests, else "train" (seed-free)."""
        key = f"{self.letter}|{self.count}|{self.order}|{self.unique}|{self.max_len}".encode()
        u = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
        return "test" if u < TEST_FRACTION else "train"


@functools.cache
def _candidates(letter: str, max_len: int | None) -> tuple[str, ...]:
    return tuple(w for w in WORDS if w[0] == letter and (max_len is None or len(w) <= max_len))


def all_requests(max_words: int) -> Iterator[Request]:
    """Every request with 2..max_words words that has a perfect response."""
    for letter in string.ascii_lowercase:
        for count in range(2, max_words + 1):
            for order in ORDERS:
                for unique in (False, True):
                    for max_len in MAX_LENS:
                        request = Request(letter, count, order, unique, max_len)
                        if len(request.candidates()) >= count:
                            yield request


def render_prompt(request: Request, template: int) -> str:
    """The prompt text of a request in phrasing `template` (an index into TEMPLATES)."""
    t = TEMPLATES[template]
    parts = [t["head"]]
    if request.order != "any":
        parts.append(t[request.order])
    if request.unique:
        parts.append(t["unique"])
    if request.max_len is not None:
        parts.append(t["max_len"])
    fields = {"count": request.count, "letter": request.letter, "max_len": request.max_len}
    return "".join(parts).format(**fields) + "\n"


@functools.cache
def _prompt_table() -> dict[str, Request]:
    return {render_prompt(r, t): r for r in all_requests(MAX_WORDS) for t in range(len(TEMPLATES))}


def request_of(prompt: str) -> Request:
    """The request behind a chat-task prompt (in any phrasing)."""
    try:
        return _prompt_table()[prompt]
    except KeyError:
        raise ValueError(f"not a chat-task prompt: {prompt!r}") from None


def _in_order(a: str, b: str, order: str) -> bool:
    return order == "any" or (a < b if order == "alphabetical" else a > b)


def _word_ok(request: Request, word: str) -> bool:
    """Whether one word meets the per-word requirements (known, letter, length)."""
    length_ok = request.max_len is None or len(word) <= request.max_len
    return word in WORD_SET and word.startswith(request.letter) and length_ok


def requirement_credits(request: Request, words: list[str]) -> dict[str, float]:
    """Credit in [0, 1] for each requirement of `request`, over max(n, k) word slots."""
    n, k = len(words), request.count
    slots = max(n, k)
    credits = {
        "word": sum(w in WORD_SET for w in words) / slots,
        "letter": sum(w.startswith(request.letter) for w in words) / slots,
        "count": max(0.0, 1.0 - abs(n - k) / k),
    }
    if request.order != "any":
        in_order = sum(_in_order(a, b, request.order) for a, b in zip(words, words[1:]))
        credits["order"] = in_order / (slots - 1)
    if request.unique:
        credits["unique"] = len(set(words)) / slots
    if request.max_len is not None:
        credits["max_len"] = sum(len(w) <= request.max_len for w in words) / slots
    return credits


def gold_score(request: Request, words: list[str]) -> float:
    """The gold rater: weighted mean of the requirement credits; 0 for no words."""
    if not words:
        return 0.0
    credits = requirement_credits(request, words)
    return sum(WEIGHTS[r] * c for r, c in credits.items()) / sum(WEIGHTS[r] for r in credits)


def perfect_response(request: Request, rng: random.Random) -> str:
    """A response meeting every requirement: distinct candidate words in the requested order."""
    words = rng.sample(request.candidates(), request.count)
    if request.order != "any":
        words.sort(reverse=request.order == "reverse")
    return "\n".join(words)


class ChatTask:
    """Word-list requests rated by a hidden gold rater (see the module docstring).

    seed: fixes which requests, phrasings and perfect responses `examples` returns;
    n_templates: number of phrasings per request (1..len(TEMPLATES)), the prompt-diversity knob;
    max_words: the longest list a request asks for (2..MAX_WORDS).
    Train and test hold disjoint requests, by a hash of the request.
    """

    name = "chat"

    def __init__(self, seed: int = 0, n_templates: int = 4, max_words: int = 5):
        if not 1 <= n_templates <= len(TEMPLATES):
            raise ValueError(f"n_templates must be in 1..{len(TEMPLATES)}, got {n_templates}")
        if not 2 <= max_words <= MAX_WORDS:
            raise ValueError(f"max_words must be in 2..{MAX_WORDS}, got {max_words}")
        self.seed, self.n_templates, self.max_words = seed, n_templates, max_words

    def examples(self, split: str, n: int) -> list[Example]:
        """The first `n` of a seeded shuffle of the split's (request, phrasing) pairs (distinct prompts)."""
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; valid: train, test")
        requests = [r for r in all_requests(self.max_words) if r.split() == split]
        pool = [(r, t) for r in requests for t in range(self.n_templates)]
        if n > len(pool):
            raise ValueError(f"asked for {n} {split} examples; there are {len(pool)} distinct prompts")
        random.Random(f"chat:{self.seed}").shuffle(pool)
        examples = []
        for request, template in pool[:n]:
            prompt = render_prompt(request, template)
            solution = perfect_response(request, random.Random(f"chat:{self.seed}:{prompt}"))
            examples.append(Example(prompt=prompt, solution=solution))
        return examples

    def score(self, example: Example, response: str) -> float:
        """The hidden gold rating of a response, in [0, 1] (1 for a perfect response)."""
        return gold_score(request_of(example.prompt), self.split_steps(response))

    def extract_answer(self, response: str) -> str | None:
        """Chat responses have no final answer to vote on."""
        return None

    def split_steps(self, response: str) -> list[str]:
        """The response's words: its non-blank lines, stripped."""
        return [line.strip() for line in response.split("\n") if line.strip()]

    def step_labels(self, example: Example, response: str) -> list[bool]:
        """Per word: True while every word so far meets the per-word requirements, repeats none
        (when asked), keeps the order (when asked) and does not exceed the requested count."""
        request = request_of(example.prompt)
        labels, ok = [], True
        words = self.split_steps(response)
        for i, word in enumerate(words):
            prev = words[i - 1] if i > 0 else None
            ok = ok and _word_ok(request, word) and i < request.count
            ok = ok and not (request.unique and word in words[:i])
            ok = ok and (prev is None or _in_order(prev, word, request.order))
            labels.append(ok)
        return labels


def corrupt(example: Example, level: float, rng: random.Random) -> str:
    """A degraded copy of the example's perfect solution; level 0 returns it unchanged.

    Each word is corrupted with probability `level` (a word of another letter, a misspelling,
    random letters, or a repeat of the previous word); then with probability `level` the count is
    made wrong (a word dropped or a known word added), and with probability `level` the words are
    shuffled.
    """
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"corruption level must be in [0, 1], got {level}")
    request = request_of(example.prompt)
    words = example.solution.split("\n")
    for i in range(len(words)):
        if rng.random() < level:
            words[i] = _corrupt_word(words, i, request, rng)
    if rng.random() < level:
        if len(words) > 1 and rng.random() < 0.5:
            words.pop(rng.randrange(len(words)))
        else:
            words.insert(rng.randrange(len(words) + 1), rng.choice(WORDS))
    if rng.random() < level:
        rng.shuffle(words)
    return "\n".join(words)


def _corrupt_word(words: list[str], i: int, request: Request, rng: random.Random) -> str:
    kind = rng.choice(("letter", "misspell", "noise", "repeat") if i > 0 else ("letter", "misspell", "noise"))
    if kind == "letter":
        return rng.choice([w for w in WORDS if w[0] != request.letter])
    if kind == "misspell":
        j = rng.randrange(1, len(words[i]))
        return words[i][:j] + rng.choice(string.ascii_lowercase) + words[i][j + 1 :]
    if kind == "noise":
        return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 6)))
    return words[i - 1]


def rate_pair(
    gold_a: Tensor, gold_b: Tensor, *, temperature: float, generator: torch.Generator | None = None
) -> Tensor:
    """Simulated raters: True where response a is preferred, drawn from Bradley–Terry on the gold
    scores, P(a ≻ b) = σ((g_a - g_b) / temperature); temperature 0 gives the gold preference
    (ties broken at random).

    gold_a, gold_b: [B] gold scores. Returns [B] bool.
    """
    if temperature < 0:
        raise ValueError(f"rater temperature must be >= 0, got {temperature}")
    diff = gold_a - gold_b
    p_a = torch.sigmoid(diff / temperature) if temperature > 0 else (torch.sign(diff) + 1) / 2
    u = torch.rand(diff.shape, generator=generator, dtype=diff.dtype, device=diff.device)
    return u < p_a


def make_preference_pairs(
    prompts: list[str],
    responses_per_prompt: list[list[str]],
    gold: list[list[float]],
    *,
    temperature: float,
    generator: torch.Generator | None = None,
) -> list[PreferencePair]:
    """Every pair of distinct responses to each prompt, rated once by `rate_pair`.

    prompts: [P]; responses_per_prompt, gold: [P][n_p] responses and their gold scores.
    Pairs of identical texts are skipped. Returns (prompt, chosen, rejected) triples, prompt by prompt.
    """
    if not len(prompts) == len(responses_per_prompt) == len(gold):
        raise ValueError("prompts, responses_per_prompt and gold must have the same length")
    index = []  # (prompt i, response j, response k)
    for i, (responses, scores) in enumerate(zip(responses_per_prompt, gold)):
        if len(responses) != len(scores):
            raise ValueError(f"prompt {i}: {len(responses)} responses but {len(scores)} gold scores")
        index += [(i, j, k) for j in range(len(responses)) for k in range(j + 1, len(responses))
                  if responses[j] != responses[k]]
    gold_a = torch.tensor([gold[i][j] for i, j, _ in index], dtype=torch.float64)
    gold_b = torch.tensor([gold[i][k] for i, _, k in index], dtype=torch.float64)
    a_wins = rate_pair(gold_a, gold_b, temperature=temperature, generator=generator).tolist()
    pairs = []
    for (i, j, k), a_won in zip(index, a_wins):
        a, b = responses_per_prompt[i][j], responses_per_prompt[i][k]
        pairs.append(PreferencePair(prompts[i], *((a, b) if a_won else (b, a))))
    return pairs
