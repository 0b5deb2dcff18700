"""Generated two-word flow-run names ("electric-mandrill"), derived from the run id."""

from __future__ import annotations

import zlib

ADJECTIVES = (
    "able amber ancient arctic aromatic austere bald bold brave bright brisk calm careful "
    "cerulean cheerful clever cobalt cosmic crafty crimson curious daring dazzling eager "
    "electric elegant emerald energetic fancy fearless fiery flawless fluffy gentle glorious "
    "golden graceful hasty heavenly hilarious humble icy imperial jolly khaki lavender lively "
    "lucky magenta mellow merciful mighty misty modest nifty nimble noble olive opalescent "
    "outstanding patient placid polite proud quick quixotic radiant rapid rational ruby "
    "rustling sassy scarlet serious shiny silky silver smiling sophisticated sparkling "
    "spectacular stalwart steady stirring sturdy sunny tactful tangerine terrific thundering "
    "tidy tourmaline tranquil turquoise ultramarine uppish vagabond valiant vegan vehement "
    "vermilion vigilant vivacious wakeful whimsical wise witty xanthic youthful zealous"
).split()
ANIMALS = (
    "aardvark albatross alligator alpaca anaconda ant antelope armadillo baboon badger "
    "barracuda bat bear beaver bee bison boar bobcat buffalo butterfly camel capybara caracal "
    "cassowary cat caterpillar chameleon cheetah chimpanzee chinchilla cobra cockatoo condor "
    "coyote crab crane crocodile crow deer dingo dinosaur dolphin donkey dove dragonfly duck "
    "eagle eel elephant elk emu falcon ferret finch flamingo fox frog gazelle gecko gerbil "
    "gibbon giraffe gnu goat goose gopher gorilla grasshopper grouse hamster hare hawk "
    "hedgehog heron hippo hornet horse hound hummingbird hyena ibex iguana impala jackal "
    "jaguar jellyfish kangaroo kingfisher kiwi koala kudu lemur leopard lion lizard llama "
    "lobster lynx macaw mandrill manatee mantis marmot meerkat mink mole mongoose moose "
    "mouse narwhal newt ocelot octopus okapi orangutan oryx ostrich otter owl oyster panda "
    "panther parrot partridge peacock pelican penguin pheasant pig pigeon platypus porcupine "
    "puffin puma python quail rabbit raccoon ram raven reindeer rhino salamander seal shark "
    "sheep skink skunk sloth snail snake sparrow spider squid squirrel starfish stingray stork "
    "swan tapir tarsier termite tiger toad toucan turkey turtle viper vulture wallaby walrus "
    "wasp weasel whale wildebeest wolf wolverine wombat woodpecker yak zebra"
).split()


def two_word_name(seed: str) -> str:
    h = zlib.crc32(seed.encode())
    return f"{ADJECTIVES[h % len(ADJECTIVES)]}-{ANIMALS[(h // len(ADJECTIVES)) % len(ANIMALS)]}"
