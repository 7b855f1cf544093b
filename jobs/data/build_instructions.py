"""Writes jobs/data/instructions_train.jsonl and instructions_heldout.jsonl: open instruction prompts.

Five categories (writing, explanation, advice, coding, reasoning), each built
from hand-written templates and subjects. Every prompt carries its category.
The held-out split takes a fixed share of every category; the two splits
never share a prompt, and neither holds a prompt of tiny.jsonl.
Deterministic: run ``python -m jobs.data.build_instructions`` to rewrite both.
"""

import json
import random
from pathlib import Path

from jobs.data.build_tiny import INSTRUCTIONS as TINY_INSTRUCTIONS

HELDOUT_PER_CATEGORY = 14

TOPICS = [
    "the first snow of winter", "a lighthouse keeper", "a city at night", "an old bicycle", "the smell of rain",
    "a lost umbrella", "a morning market", "a quiet library", "a mountain lake", "a broken clock",
    "a kite on a windy day", "the last day of summer", "a cup of coffee", "a train journey", "a garden in spring",
]
WRITING = [
    *(f"Write a haiku about {t}." for t in TOPICS),
    *(f"Write a four-line rhyming poem about {t}." for t in TOPICS[:10]),
    *(f"Write the opening paragraph of a short story about {t}." for t in TOPICS[5:]),
    *(
        f"Write a short, polite email to {who} {about}."
        for who, about in [
            ("a landlord", "asking for a leaking tap to be repaired"),
            ("a colleague", "asking to move a meeting to Thursday"),
            ("a customer", "apologising for a late delivery"),
            ("a neighbour", "about a party you are hosting on Saturday"),
            ("a professor", "asking for an extension on an essay"),
            ("a hotel", "asking whether early check-in is possible"),
            ("a team", "announcing that the office will close early on Friday"),
            ("a friend", "congratulating them on a new job"),
        ]
    ),
    *(
        f"Write a product description for {p} in under 80 words."
        for p in ["a reusable water bottle", "a pair of noise-cancelling headphones", "a handmade wool scarf",
                  "a solar-powered phone charger", "a cast-iron frying pan", "a beginner's chess set",
                  "a folding travel desk", "an indoor herb garden kit"]
    ),
    *(
        f"Write a limerick about {a}."
        for a in ["a clumsy giraffe", "a sleepy owl", "a cat who loves boxes", "a penguin on holiday",
                  "a forgetful wizard", "a dog who hates baths", "a very proud rooster", "a tortoise in a hurry"]
    ),
    *(
        f"Write a short speech for {o}."
        for o in ["a friend's wedding", "a retirement party", "the opening of a community garden",
                  "a school graduation", "a team that just finished a hard project", "a grandparent's 90th birthday"]
    ),
]

CONCEPTS = [
    "photosynthesis", "inflation", "gravity", "compound interest", "machine learning", "vaccines",
    "the greenhouse effect", "supply and demand", "DNA", "black holes", "electric current", "recursion",
    "public-key encryption", "the immune system", "plate tectonics", "evolution by natural selection",
    "interest rates", "how the internet routes data", "antibiotic resistance", "ocean tides", "rainbows",
    "opportunity cost", "entropy", "a neural network", "how a refrigerator keeps food cold",
]
DIFFERENCES = [
    ("a virus", "a bacterium"), ("weather", "climate"), ("a simile", "a metaphor"), ("speed", "velocity"),
    ("a stock", "a bond"), ("an atom", "a molecule"), ("a democracy", "a republic"), ("RAM", "storage"),
    ("mass", "weight"), ("a comet", "an asteroid"), ("empathy", "sympathy"), ("a loan", "a grant"),
    ("an alligator", "a crocodile"), ("baking soda", "baking powder"), ("a hurricane", "a tornado"),
]
WHYS = [
    "is the ocean salty", "do leaves change colour in autumn", "do we yawn", "does ice float on water",
    "do cats purr", "does bread go stale", "do planes leave white trails in the sky", "do onions make us cry",
    "is the sky dark at night even though there are so many stars", "do we get goosebumps",
    "does metal feel colder than wood at the same temperature", "do bubbles form in boiling water",
    "do some people need glasses", "does the moon change shape", "do birds migrate",
]
EXPLANATION = [
    *(f"Explain {c} in simple terms." for c in CONCEPTS),
    *(f"What is the difference between {a} and {b}?" for a, b in DIFFERENCES),
    *(f"Why {w}?" for w in WHYS),
    *(f"Explain {c} to a ten-year-old." for c in CONCEPTS[:12]),
]

GOALS = [
    "staying focused while working from home", "saving money on groceries", "running a first 5 km race",
    "making a good first impression at a job interview", "keeping houseplants alive", "learning to cook",
    "reducing stress before exams", "writing a clear CV", "keeping a tidy desk", "reading more books",
    "public speaking", "starting a vegetable garden", "making friends in a new city", "sleeping better",
    "staying safe while hiking alone", "managing email overload", "learning to play the guitar",
    "drinking more water", "preparing for a long flight", "teaching a child to ride a bike",
]
SITUATIONS = [
    "politely decline extra work from my manager", "tell a friend they hurt my feelings",
    "prepare for a difficult conversation with a landlord", "recover after a bad night's sleep",
    "stop procrastinating on a big project", "choose between two job offers", "plan a budget for a holiday",
    "get back into exercise after an injury", "keep in touch with friends who live far away",
    "handle a noisy neighbour", "ask for a pay rise", "make my small apartment feel bigger",
    "organise a birthday party on a tight budget", "learn a new language as an adult",
    "deal with a coworker who takes credit for my work",
]
DECISIONS = [
    "buying a used car", "adopting a dog", "choosing a university", "renting my first apartment",
    "starting a small business", "buying a laptop for programming", "moving to another country",
    "picking a health insurance plan", "switching careers at forty", "choosing a running shoe",
]
ADVICE = [
    *(f"Give three tips for {g}." for g in GOALS),
    *(f"How can I {s}?" for s in SITUATIONS),
    *(f"What should I consider when {d}?" for d in DECISIONS),
    *(f"What are common mistakes people make when {g}?" for g in GOALS[:12]),
]

TASKS = [
    "checks whether a string is a palindrome", "returns the n-th Fibonacci number", "counts the vowels in a string",
    "removes duplicates from a list while keeping the order", "merges two sorted lists into one sorted list",
    "returns the second largest number in a list", "converts a temperature from Celsius to Fahrenheit",
    "checks whether a number is prime", "reverses the words in a sentence", "flattens a list of lists",
    "returns the most common word in a text", "computes the factorial of a number iteratively",
    "validates that a string looks like an email address", "groups a list of words by their first letter",
    "finds the longest common prefix of a list of strings", "computes the average of a list, ignoring None values",
    "rotates a list by k positions", "checks whether two strings are anagrams", "counts lines in a text file",
    "returns the indices of two numbers in a list that add up to a target",
    "capitalises the first letter of every word in a sentence", "checks whether brackets in a string are balanced",
    "returns the digits of an integer as a list", "computes the greatest common divisor of two numbers",
]
SNIPPETS = [
    "[x * x for x in range(10) if x % 2 == 0]", "sorted(words, key=len, reverse=True)",
    "{k: v for k, v in pairs if v is not None}", "any(c.isdigit() for c in password)",
    "', '.join(map(str, numbers))", "dict(zip(keys, values))", "sum(1 for line in open(path))",
    "list(filter(None, items))", "max(scores, key=scores.get)", "text.strip().lower().split()",
]
HOWTOS = [
    ("read a CSV file", "Python"), ("reverse an array", "JavaScript"), ("sort a map by value", "Java"),
    ("handle an exception", "Python"), ("make an HTTP request", "JavaScript"), ("read a file line by line", "Go"),
    ("define a class with a constructor", "Python"), ("remove an element from a list", "Python"),
    ("format a date as YYYY-MM-DD", "Python"), ("write a unit test", "Python"),
    ("find the length of a string", "C"), ("iterate over a dictionary", "Python"),
]
PY_DIFFERENCES = [
    ("a list", "a tuple"), ("'is'", "'=='"), ("a module", "a package"), ("append", "extend"),
    ("a generator", "a list comprehension"), ("deepcopy", "copy"), ("*args", "**kwargs"), ("a set", "a dict"),
]
CODING = [
    *(f"Write a Python function that {t}." for t in TASKS),
    *(f"Explain what this Python expression does: {s}" for s in SNIPPETS),
    *(f"How do I {t} in {lang}?" for t, lang in HOWTOS),
    *(f"What is the difference between {a} and {b} in Python?" for a, b in PY_DIFFERENCES),
    *(f"Write a Python function that {t}, and explain its time complexity." for t in TASKS[:12]),
]

SEQUENCES = ["1, 2, 4, 7, 11", "81, 27, 9, 3", "0, 1, 3, 6, 10", "2, 5, 10, 17", "4, 7, 12, 19",
             "2, 4, 8, 16", "1, 4, 9, 16", "3, 6, 9, 12", "1, 1, 2, 3, 5", "10, 8, 6, 4", "1, 3, 7, 15",
             "2, 3, 5, 7, 11", "100, 50, 25", "1, 2, 6, 24", "5, 10, 20, 40"]
SYLLOGISMS = [
    ("cats", "mammals", "Tom"), ("roses", "flowers", "this plant"), ("squares", "rectangles", "this shape"),
    ("doctors", "graduates", "Maria"), ("trout", "fish", "this animal"), ("violins", "instruments", "this object"),
]
DILEMMAS = [
    "A bat and a ball cost 1.10 in total, and the bat costs 1.00 more than the ball. How much does the ball cost? Explain step by step.",
    "If it takes 5 machines 5 minutes to make 5 widgets, how long would 100 machines take to make 100 widgets? Explain.",
    "A farmer must cross a river with a wolf, a goat and a cabbage, taking one at a time. How can he do it? Explain.",
    "You have two ropes that each take an hour to burn, unevenly. How can you measure 45 minutes? Explain.",
    "Three friends split a bill of 30 equally, then get 5 back and keep 1 each. Where did the missing money go? Explain.",
    "Is it better to pay off a loan at 7% interest or invest in a savings account at 3%? Reason it through.",
    "A shop raises a price by 10% and then lowers it by 10%. Is the final price the same as the original? Explain.",
    "If all the clocks in a house are five minutes fast, how can you still be on time? Reason it through.",
    "Which weighs more: a kilogram of feathers or a kilogram of iron? Explain.",
    "A snail climbs 3 metres up a 10 metre wall each day and slips back 2 metres each night. When does it reach the top? Explain.",
    "You meet two guards, one who always lies and one who always tells the truth. What single question finds the right door? Explain.",
    "Why is it a mistake to conclude that ice cream causes drowning because both rise in summer? Explain.",
]
PLANS = [
    "a three-day trip to a city you have never visited", "a week of healthy dinners for two people",
    "a study schedule for an exam in two weeks", "moving house in one weekend", "a small garden party for 20 guests",
    "learning to swim in a month", "a charity bake sale at a school", "a five-minute presentation about recycling",
]
REASONING = [
    *(f"What number comes next in the sequence {s}? Explain the pattern." for s in SEQUENCES),
    *(f"All {a} are {b}. {x} is one of the {a}. What can we conclude about {x}, and why?" for a, b, x in SYLLOGISMS),
    *(f"All {a} are {b}. {x} is one of the {b}. Can we conclude that {x} is one of the {a}? Explain." for a, b, x in SYLLOGISMS),
    *DILEMMAS,
    *(f"Plan {p}, step by step, and explain the order you chose." for p in PLANS),
    *(f"What are the pros and cons of {d}? Weigh them and give a recommendation." for d in DECISIONS),
    *(f"Estimate, with your reasoning, {q}." for q in [
        "how many piano tuners work in a city of one million people", "how many breaths a person takes in a year",
        "how many books fit on a two-metre shelf", "how long it would take to walk across your country",
        "how many litres of water a family of four uses in a day", "how many trees are needed to make a ream of paper",
    ]),
]

CATEGORIES = {"writing": WRITING, "explanation": EXPLANATION, "advice": ADVICE, "coding": CODING, "reasoning": REASONING}


def build() -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows): every prompt once, with its category; tiny.jsonl's prompts excluded."""
    rng = random.Random(20261201)
    excluded = set(TINY_INSTRUCTIONS)
    train, heldout = [], []
    for category, prompts in CATEGORIES.items():
        unique = sorted(set(prompts) - excluded)
        rng.shuffle(unique)
        rows = [{"prompt": p, "category": category} for p in unique]
        heldout += rows[:HELDOUT_PER_CATEGORY]
        train += rows[HELDOUT_PER_CATEGORY:]
    rng.shuffle(train)
    rng.shuffle(heldout)
    return train, heldout


def main() -> None:
    train, heldout = build()
    for name, rows in (("instructions_train.jsonl", train), ("instructions_heldout.jsonl", heldout)):
        out = Path(__file__).with_name(name)
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} prompts to {out}")


if __name__ == "__main__":
    main()
