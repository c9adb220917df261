"""The words of the built-in captioned sets: what names each class and attribute value, and which of those
words are kept out of training to judge prompts as people write them.

The lists live in ``training/vocabulary.json`` (read by :mod:`training.captions`). They are built once, by
``python -m training.vocabulary`` (needs the ``vocab`` extra, nltk, and WordNet 3.0 from Debian's
``wordnet-base``), from three sources per class or value:

1. **WordNet**: the lemmas of hand-picked synsets (``car.n.01``: car, auto, automobile, motorcar) and of
   their direct hyponyms (convertible, coupe, hatchback, jeep, sedan...), for colours also the adjective
   senses' similar words (red.s.01: crimson, scarlet, ruby...). Lemmas of several words with capitals,
   digits, over 20 characters, or that WordNet also gives another key of the same set are dropped.
2. **Everyday words** WordNet files elsewhere or in another dialect ("trainers", "jumper", "lorry", "purse")
   and the project's earlier hand-written synonyms.
3. **Exclusions**: hyponyms that name something else to a person looking at a 32x32 photo (an "amphibian"
   plane, a "hearse" is a car but not what people mean).

**The held-out words** (none of ``ALWAYS_TRAIN``, the words people were seen typing and missing) are
chosen by rule, before any training, from the *familiar* candidates (WordNet's
SemCor count of at least 1 for that sense, or in the everyday list): every word whose SHA-256 (of
``key:word``) is below a third of the hash space, at least one per key that has three or more familiar
candidates; never the key's canonical name, nor a word inside a training word ("toad" of "tree toad"). They appear in no training caption; the text-alignment metrics'
``heldout-words`` phrasing prompts with them. The rule is in :func:`split_words`; changing it means
retraining before the figures mean anything.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

VOCABULARY_FILE = Path(__file__).with_name("vocabulary.json")
HELDOUT_SHARE = 1 / 3

# key -> WordNet synsets whose lemmas (and direct hyponyms' lemmas) name it
SEED_SYNSETS: dict[str, dict[str, tuple[str, ...]]] = {
    "cifar10-captions": {
        "airplane": ("airplane.n.01", "airliner.n.01", "jet.n.01", "aircraft.n.01"),
        "automobile": ("car.n.01",),
        "bird": ("bird.n.01", "passerine.n.01", "songbird.n.01"),
        "cat": ("cat.n.01", "domestic_cat.n.01", "kitten.n.01"),
        "deer": ("deer.n.01", "elk.n.01"),
        "dog": ("dog.n.01", "puppy.n.01", "hound.n.01", "terrier.n.01"),
        "frog": ("frog.n.01", "toad.n.01"),
        "horse": ("horse.n.01", "pony.n.01", "foal.n.01"),
        "ship": ("ship.n.01", "boat.n.01", "vessel.n.02"),
        "truck": ("truck.n.01", "trailer_truck.n.01", "lorry.n.02"),
        "red": ("red.n.01", "red.s.01"),
        "orange": ("orange.n.02", "orange.s.01"),
        "yellow": ("yellow.n.01", "yellow.s.01"),
        "green": ("green.n.01", "green.s.01"),
        "blue": ("blue.n.01", "blue.s.01"),
        "purple": ("purple.n.01", "purple.s.01"),
        "pink": ("pink.n.01", "pink.s.01"),
        "brown": ("brown.n.01", "brown.s.01"),
        "white": ("white.n.01", "white.a.01"),
        "grey": ("grey.n.01", "grey.s.01"),
        "black": ("black.n.01", "black.a.01"),
    },
    "fashion-mnist-captions": {
        "T-shirt/top": ("jersey.n.03", "top.n.10", "undershirt.n.01"),
        "Trouser": ("trouser.n.01", "jean.n.01", "slacks.n.01"),
        "Pullover": ("sweater.n.01", "pullover.n.01"),
        "Dress": ("dress.n.01", "gown.n.01", "sundress.n.01"),
        "Coat": ("coat.n.01", "jacket.n.01", "overcoat.n.01"),
        "Sandal": ("sandal.n.01", "flip-flop.n.02"),
        "Shirt": ("shirt.n.01", "blouse.n.01"),
        "Sneaker": ("gym_shoe.n.01", "running_shoe.n.01"),
        "Bag": ("bag.n.04", "bag.n.06", "handbag.n.01"),
        "Ankle boot": ("boot.n.01",),
        "dark": ("dark.a.01", "black.a.01"),
        "light": ("light.s.06", "pale.s.01", "white.a.01"),
        "narrow": ("narrow.a.01", "slender.s.02", "tight.s.06"),
        "wide": ("wide.a.01", "loose.s.04", "baggy.s.01"),
    },
}

# words people use that WordNet files elsewhere, or only in another dialect; with the project's earlier
# hand-written synonyms
EVERYDAY_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "cifar10-captions": {
        "airplane": ("plane", "aeroplane", "jet", "airliner", "passenger plane", "propeller plane", "jumbo jet",
                     "fighter jet", "aircraft"),
        "automobile": ("car", "hatchback", "motor car", "station wagon", "sports car", "convertible", "coupe",
                       "sedan", "saloon car", "taxi", "suv", "estate car"),
        "bird": ("little bird", "sparrow", "finch", "robin", "seagull", "parrot", "songbird", "ostrich", "pigeon",
                 "chick", "eagle", "hawk", "owl", "duck"),
        "cat": ("kitty", "house cat", "tomcat", "tabby cat", "pet cat", "kitten", "moggy", "pussycat", "tabby"),
        "deer": ("doe", "roe deer", "reindeer", "stag", "elk", "fawn", "antelope", "moose", "buck"),
        "dog": ("puppy", "pup", "doggy", "terrier", "retriever", "poodle", "hound", "labrador", "pooch",
                "spaniel", "sheepdog", "bulldog"),
        "frog": ("toad", "tree frog", "amphibian", "pond frog", "bullfrog", "froggy", "tadpole"),
        "horse": ("pony", "mare", "foal", "racehorse", "colt", "stallion", "steed", "mustang", "horsey"),
        "ship": ("boat", "cargo ship", "ferry", "steamer", "cruise ship", "sailboat", "tanker", "vessel",
                 "yacht", "battleship", "liner", "freighter", "container ship"),
        "truck": ("lorry", "pickup truck", "dump truck", "delivery truck", "tow truck", "cement truck",
                  "semi truck", "fire engine", "big rig", "juggernaut", "van", "tipper truck"),
        "red": ("crimson", "cherry-red", "ruby", "brick red", "scarlet", "maroon", "burgundy"),
        "orange": ("tangerine", "copper", "rust-orange", "pumpkin orange", "amber", "apricot", "ginger"),
        "yellow": ("golden", "mustard", "canary-yellow", "sunflower yellow", "lemon", "gold", "butter yellow"),
        "green": ("emerald", "olive", "leafy green", "lime", "forest green", "jade", "mint green", "khaki"),
        "blue": ("navy", "sky-blue", "cobalt", "royal blue", "turquoise", "azure", "teal", "baby blue"),
        "purple": ("violet", "lavender", "lilac", "mauve", "indigo", "plum", "magenta purple", "grape"),
        "pink": ("rose", "salmon", "magenta", "fuchsia", "hot pink", "blush", "coral pink", "rosy"),
        "brown": ("chocolate", "tan", "chestnut", "bronze", "caramel", "coffee", "beige", "hazel", "mocha"),
        "white": ("snowy", "cream", "milky white", "pearl white", "chalk-white", "ivory", "snow-white", "off-white"),
        "grey": ("gray", "silver", "ash-grey", "charcoal grey", "slate", "silvery", "greyish", "dove grey"),
        "black": ("inky black", "pitch-black", "coal-black", "midnight black", "ebony", "jet-black", "sable",
                  "raven"),
    },
    "fashion-mnist-captions": {
        "T-shirt/top": ("t-shirt", "top", "tank top", "short-sleeved top", "tshirt", "crew-neck t-shirt",
                        "sleeveless top", "vest top", "camisole", "polo top", "tee", "tee shirt", "singlet",
                        "crop top", "vest"),
        "Trouser": ("pair of trousers", "pair of pants", "pair of jeans", "pair of leggings", "pair of chinos",
                    "pair of joggers", "pair of sweatpants", "pair of cargo pants", "pair of slacks",
                    "pair of tracksuit bottoms", "pair of khakis", "pair of corduroys", "pair of denims"),
        "Pullover": ("sweater", "knit sweater", "sweatshirt", "long-sleeved knit", "cardigan", "knitwear",
                     "woolly sweater", "turtleneck", "crew-neck sweater", "jumper", "woolly jumper", "jersey",
                     "hoodie", "knitted top", "fleece"),
        "Dress": ("gown", "sundress", "evening dress", "cocktail dress", "maxi dress", "summer dress",
                  "shift dress", "frock", "ball gown", "party dress", "wedding dress", "tunic dress", "pinafore"),
        "Coat": ("jacket", "parka", "raincoat", "anorak", "trench coat", "puffer jacket", "winter coat", "peacoat",
                 "overcoat", "blazer", "windbreaker", "mac", "duffel coat", "bomber jacket"),
        "Sandal": ("flip-flop", "open-toed sandal", "summer sandal", "slide", "gladiator sandal", "heeled sandal",
                   "beach sandal", "espadrille", "strappy shoe", "thong sandal", "mule", "wedge sandal"),
        "Shirt": ("blouse", "work shirt", "collared shirt", "oxford shirt", "flannel shirt", "denim shirt",
                  "linen shirt", "button-up shirt", "dress shirt", "long-sleeved shirt", "checked shirt"),
        "Sneaker": ("trainer", "trainers", "sports shoe", "tennis shoe", "low-top sneaker", "athletic shoe",
                    "jogging shoe", "gym shoe", "canvas sneaker", "running shoe", "plimsoll", "kicks",
                    "basketball shoe", "skate shoe"),
        "Bag": ("handbag", "tote bag", "shoulder bag", "satchel", "clutch", "backpack", "shopping bag",
                "leather bag", "purse", "tote", "rucksack", "duffel bag", "briefcase", "pouch", "messenger bag"),
        "Ankle boot": ("boot", "short boot", "chelsea boot", "heeled boot", "desert boot", "chukka boot",
                       "winter boot", "leather boot", "bootie", "booties", "cowboy boot", "hiking boot",
                       "combat boot", "work boot"),
        "dark": ("dim", "deep-toned", "dark-coloured", "blackish", "black", "charcoal", "shadowy", "dark grey",
                 "murky", "dusky", "deep", "inky", "jet-black", "sombre"),
        "light": ("pale", "light-coloured", "whitish", "pastel", "white", "light grey", "luminous", "bleached",
                  "faded", "bright", "ivory", "cream", "washed-out", "snowy"),
        "narrow": ("slim", "thin", "slender", "tight", "fitted", "lean", "close-fitting", "tapered", "skinny",
                   "figure-hugging", "snug", "slim-fit", "form-fitting"),
        "wide": ("broad", "loose", "baggy", "oversized", "voluminous", "boxy", "relaxed-fit", "ample", "roomy",
                 "flowing", "chunky", "generous", "flared"),
    },
}

# WordNet hyponyms that a person would not use for this class of photo
EXCLUDED = {
    "amphibian", "hangar queen", "heavier-than-air craft", "ski-plane", "tanker plane", "airship", "balloon",
    "hearse", "ambulance", "bus", "cab", "hack", "taxi", "jalopy", "heap", "loaner", "electric", "stanley steamer",
    "model t", "gas guzzler", "used-car", "secondhand car", "beach wagon", "wagon", "horseless carriage",
    "cruiser", "police cruiser", "patrol car", "prowl car", "squad car", "pace car", "racer", "race car",
    "racing car", "stock car", "touring car", "tourer", "phaeton", "minivan", "limo", "limousine",
    "dickey-bird", "dickeybird", "dickybird", "night bird", "cock", "hen", "nester", "protoavis", "archaeopteryx",
    "archeopteryx", "sinornis", "ibero-mesornis", "archaeornis", "ratite", "ratite bird", "flightless bird",
    "carinate", "carinate bird", "flying bird", "bird of passage", "twitterer", "mouser", "alley cat", "tom",
    "gib", "tabby", "queen", "pussy", "puss", "grimalkin", "wildcat", "mamma", "giant", "wild cat",
    "cervid", "corn dog", "pooch", "cur", "mongrel", "mutt", "lapdog", "toy dog", "toy", "pug", "pug-dog",
    "leonberg", "newfoundland", "great pyrenees", "spitz", "griffon", "brussels griffon", "belgian griffon",
    "dalmatian", "coach dog", "carriage dog", "basenji", "mexican hairless", "working dog", "hunting dog",
    "seeing-eye dog", "sniffer dog", "pet", "anuran", "batrachian", "salientian", "true frog", "ranid",
    "equine", "equid", "mount", "horse", "nag", "plug", "jade", "post horse", "post-horse", "poster",
    "remount", "harness horse", "workhorse", "eohippus", "dawn horse", "mesohippus", "protohippus", "gee-gee",
    "stepper", "high stepper", "polo pony", "pinto", "liver chestnut", "bay", "sorrel", "palomino", "roan",
    "chestnut", "gray", "grey", "dapple-grey", "dapple-gray", "steeldust", "stalking-horse", "pacer", "ambler",
    "galleon", "guard ship", "hospital ship", "merchant ship", "merchantman", "shipwreck", "slave ship",
    "whaler", "whaling ship", "abandoned ship", "derelict", "pirate", "pirate ship", "privateer", "prison ship",
    "bareboat", "dredger", "fireboat", "gondola", "small boat", "boat", "tender", "sea boat", "bumboat",
    "car-ferry", "ferry", "ferryboat", "ice-breaker", "icebreaker", "weather ship", "training ship", "school ship",
    "lightship", "shrimper", "pilot boat", "powerboat", "speedboat", "trawler", "dragger", "bathysphere",
    "capital ship", "sister ship", "vessel", "watercraft", "moving van", "panel truck", "delivery truck",
    "garbage truck", "dustcart", "fire engine", "fire truck", "hand truck", "cart", "lift truck", "forklift",
    "tow truck", "tow car", "wrecker", "tractor", "trailer truck", "rig", "artic", "semi", "tractor trailer",
    "trucking rig", "euphemism", "chamberpot", "dress", "frock", "gown", "cowl", "habit", "robe", "attire",
    "outfit", "coat", "cutaway", "tailcoat", "tails", "frock coat", "tux", "dinner jacket", "shirt", "bag",
    "airbag", "sack", "ice pack", "ice bag", "sleeping bag", "boot", "bootee", "bootie", "rubber boot",
    "gumboot", "wellington", "wellington boot", "jackboot", "riding boot", "ski boot", "buskin", "combat boot",
    "cothurnus", "cothurn", "gallows", "top", "undershirt", "singlet", "vest", "camisole",
    "honkey", "honkie", "honky", "paleface", "white man", "white trash", "white woman", "whitey", "bogey", "bogie",
    "bogy", "cruise missile", "tower", "wreck", "hulk", "ark", "unconstipated", "sulky", "undemanding",
    "panoramic", "regular", "wide-screen", "bird's-eye", "tweed", "flannel", "gabardine", "pajama", "pyjama",
    "jumper", "machine", "compact", "formal", "shift", "grip", "pusher", "scuffer", "talaria", "hessian",
    "lighter", "packet", "scooter", "tug", "junk", "cutter", "galley", "transporter", "sound truck", "semidark",
    "achromatic", "neutral", "canary", "cardinal", "sanguine", "straw", "wheat", "maize", "peach", "carnation",
    "close", "strait", "fine", "lax", "sloppy", "sweeping", "beamy", "fanlike", "twilight", "twilit", "trunks",
    "shorts", "short pants", "knickers", "swallowtail", "topper", "waterproof", "afghan", "capote", "dressing sack",
    "dressing sacque", "sacque", "banian", "banyan", "middy", "garibaldi", "guimpe", "hair shirt", "etui",
    "reticule", "polonaise", "mantua", "kirtle", "strapless", "sheath", "bodice", "bustier", "halter",
}
# the words that people were seen typing and missing: these must reach their class, so they always train
ALWAYS_TRAIN = {"frock", "jumper", "trainers", "purse", "lorry", "puppy", "jet", "kitten", "tee", "slacks", "plane",
                "boat", "pullover", "sweater", "handbag", "boot"}


def wordnet_reader(root: str | Path):
    """nltk's WordNet reader on Debian's WordNet files (``wordnet-base`` lacks nltk's ``lexnames``, which is
    the fixed list of WordNet's 45 lexicographer files; written into a temporary copy of the folder)."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    names = ("adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
             "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
             "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
             "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
             "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
             "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
             "adj.ppl").split()
    category = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
    folder = Path(tempfile.mkdtemp(prefix="wordnet-"))
    for item in Path(root).iterdir():
        if item.is_file():
            shutil.copyfile(item, folder / item.name)
    (folder / "lexnames").write_text("".join(f"{i:02d}\t{n}\t{category[n.split('.')[0]]}\n"
                                             for i, n in enumerate(names)))
    nltk.data.path.append(str(folder))

    class Reader(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):  # no mapping to another WordNet release: this one is 3.0
            return None

    try:
        return Reader(str(folder), None), folder
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _clean(lemma_name: str) -> str | None:
    word = lemma_name.replace("_", " ").strip()
    if word != word.lower() or re.search(r"[^a-z \-']", word) or len(word) > 20 or len(word.split()) > 2:
        return None
    return word


def wordnet_candidates(wn, synsets: tuple[str, ...]) -> dict[str, int]:
    """word -> SemCor count (familiarity) from the synsets, their direct hyponyms and similar adjectives."""
    out: dict[str, int] = {}
    for name in synsets:
        root = wn.synset(name)
        related = [root, *root.hyponyms(), *root.similar_tos()]
        for synset in related:
            for lemma in synset.lemmas():
                word = _clean(lemma.name())
                if word and word not in EXCLUDED:
                    out[word] = max(out.get(word, 0), lemma.count())
    return out


def _hash_share(key: str, word: str) -> float:
    return int(hashlib.sha256(f"{key}:{word}".encode()).hexdigest()[:12], 16) / 16**12


def split_words(key: str, canonical: str, familiar: list[str], others: list[str]) -> dict[str, list[str]]:
    """``{"train": [...], "heldout": [...]}`` for one key (the rule in the module doc)."""
    candidates = sorted({w for w in familiar if w != canonical})
    heldout = [w for w in candidates if _hash_share(key, w) < HELDOUT_SHARE and w not in ALWAYS_TRAIN]
    if not heldout and len(candidates) >= 3:
        heldout = [min(set(candidates) - ALWAYS_TRAIN, key=lambda w: _hash_share(key, w))]
    train = [canonical] + sorted({*candidates, *others} - set(heldout) - {canonical})
    return {"train": train, "heldout": heldout}


def keep_heldout_unseen(entries: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
    """Move a held-out word that a training word contains ("toad" in "tree toad") into training: no
    training caption may contain a held-out word."""
    train_words = [w for entry in entries.values() for w in entry["train"]]
    for entry in entries.values():
        seen = [w for w in entry["heldout"]
                if any(re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", t) for t in train_words)]
        entry["heldout"] = [w for w in entry["heldout"] if w not in seen]
        entry["train"] = entry["train"][:1] + sorted(set(entry["train"][1:]) | set(seen))
    return entries


def build(wordnet_root: str | Path) -> dict[str, Any]:
    """The vocabulary of every built-in captioned set, from WordNet and the lists above."""
    wn, folder = wordnet_reader(wordnet_root)
    try:
        out: dict[str, Any] = {"source": "WordNet 3.0 (Debian wordnet-base) via nltk, and everyday words; "
                                         "built by python -m training.vocabulary", "heldout_share": HELDOUT_SHARE}
        for dataset, seeds in SEED_SYNSETS.items():
            found = {key: wordnet_candidates(wn, synsets) for key, synsets in seeds.items()}
            everyday = EVERYDAY_WORDS[dataset]
            # a word that WordNet or the everyday lists give two keys names neither
            owners: dict[str, set[str]] = {}
            for key in seeds:
                for w in [*found[key], *everyday.get(key, ())]:
                    owners.setdefault(w, set()).add(key)
            entries = {}
            for key in seeds:
                canonical = CANONICAL[dataset].get(key, key)
                unique = lambda w: owners.get(w, {key}) == {key}  # noqa: E731, B023 - used in this iteration
                familiar = [w for w, c in found[key].items() if c >= 1 and unique(w)] + \
                           [w for w in everyday.get(key, ()) if unique(w)]
                rare = [w for w, c in found[key].items() if c < 1 and unique(w)]
                entries[key] = split_words(key, canonical, familiar, rare)
            out[dataset] = keep_heldout_unseen(entries)
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# the word each key is called by in the canonical ("heldout" phrasing) prompts
CANONICAL = {
    "cifar10-captions": {"automobile": "car"},
    "fashion-mnist-captions": {"T-shirt/top": "t-shirt", "Trouser": "pair of trousers", "Pullover": "pullover",
                               "Dress": "dress", "Coat": "coat", "Sandal": "sandal", "Shirt": "shirt",
                               "Sneaker": "sneaker", "Bag": "bag", "Ankle boot": "ankle boot"},
}


def load(dataset: str) -> dict[str, dict[str, list[str]]]:
    """key -> ``{"train": [...], "heldout": [...]}`` of one built-in captioned set."""
    return json.loads(VOCABULARY_FILE.read_text())[dataset]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.vocabulary", description=__doc__.split("\n\n")[0])
    p.add_argument("--wordnet", default="/usr/share/wordnet", help="folder of WordNet 3.0's dict files")
    p.add_argument("--out", default=str(VOCABULARY_FILE), help="the JSON to write")
    args = p.parse_args(argv)
    if not (Path(args.wordnet) / "data.noun").is_file():
        p.error(f"--wordnet: no WordNet data.noun in {args.wordnet} (apt-get install wordnet-base)")
    vocabulary = build(args.wordnet)
    Path(args.out).write_text(json.dumps(vocabulary, indent=1, ensure_ascii=False) + "\n")
    for dataset in SEED_SYNSETS:
        words = vocabulary[dataset]
        print(f"{dataset}: {sum(len(v['train']) for v in words.values())} training words, "
              f"{sum(len(v['heldout']) for v in words.values())} held out", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
