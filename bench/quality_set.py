"""A small graded retrieval set for docs/QUALITY.md, written for this repository and dedicated to the
public domain (CC0): no human-graded retrieval set installs offline from PyPI (beir, mteb and
ir-datasets download their data at run time), so this one is built by hand.

Eight long documents, each of four paragraphs on different sub-topics after the same archive notice
(PREAMBLE, as real manuals and reports open with front matter): about 400 word pieces each, longer than
all-MiniLM-L6-v2's 256-token window, so one vector per document sees the notice and the first paragraphs
only. Each query is answered by one paragraph: grade 2 for its document; grade 1 for another
document on the same subject where one exists. Several queries name exact codes or rare terms (the
case hybrid retrieval is for).
"""

from __future__ import annotations

PREAMBLE = (
    "Regional Heritage and Science Archive. This leaflet is one of a series prepared for visitors, teachers "
    "and volunteers. It may be copied freely for non-commercial and educational use. The archive thanks its "
    "volunteers, donors and partner museums for their help in collecting the material, checking the facts and "
    "preparing the illustrations. Corrections and suggestions are welcome at the visitor desk or by post. "
    "Opening hours, accessibility information and the programme of guided walks, talks and school visits are "
    "listed on the back page of every leaflet in the series. Please return borrowed leaflets to the rack."
)

DOCS: dict[str, list[str]] = {
    "lighthouse": [
        "The Skerry Point lighthouse was built in 1847 on a granite reef two miles off the coast. Its tower is "
        "forty metres tall and was raised from blocks cut on the mainland and carried out by sailing barges "
        "during the calm summer months. The builders lived on the reef in wooden huts for three seasons.",
        "The original lamp burned whale oil and was later converted to paraffin in 1872. A Fresnel lens of the "
        "first order, made in Paris, focused the light into a beam visible for twenty-two nautical miles. The "
        "lens floats on a bath of mercury so that a small clockwork motor can turn its four tonnes.",
        "Keepers served in rotations of six weeks on the rock and two weeks ashore. Their logbooks record storms, "
        "passing ships, and the daily winding of the clockwork every two hours through the night. In 1911 a "
        "keeper named Elias Rudd kept the light burning alone for nine days after his colleagues fell ill.",
        "The light was automated in 1988 and the last keepers left the reef. Today a solar-powered LED lantern "
        "with the code LX-44 flashes white every fifteen seconds, and the old lens is displayed in the harbour "
        "museum. Birdwatchers visit the reef by boat to see nesting puffins each June.",
    ],
    "sourdough": [
        "A sourdough starter is a culture of wild yeasts and lactic acid bacteria living in a paste of flour "
        "and water. It is fed daily with fresh flour and water, and a healthy starter doubles in volume within "
        "six hours of feeding at room temperature. Rye flour makes a starter more active than white flour.",
        "Hydration is the weight of water divided by the weight of flour. A dough at seventy percent hydration is "
        "easy to shape, while doughs above eighty percent become slack and need stretch-and-fold sessions during "
        "bulk fermentation to build strength. Bakers measure ingredients in grams rather than cups for accuracy.",
        "Bulk fermentation usually lasts four to six hours at twenty-four degrees Celsius. The dough is ready when "
        "it has grown by about half, shows bubbles along the sides of the container and jiggles when shaken. "
        "Cold retarding in the refrigerator overnight deepens the sour flavour.",
        "Bread is baked in a preheated cast-iron pot with the lid on for the first twenty minutes, trapping steam "
        "so the crust stays soft while the loaf expands, an effect called oven spring. The lid is then removed and "
        "the loaf bakes for another twenty-five minutes at 230 degrees until the crust is deep brown.",
    ],
    "volcano": [
        "Shield volcanoes are built almost entirely from fluid basalt lava flows that travel great distances "
        "before cooling. Their slopes are gentle, rarely steeper than ten degrees, giving them the profile of a "
        "warrior's shield lying on the ground. Mauna Loa in Hawaii is the largest active shield volcano.",
        "Stratovolcanoes are steep cones of alternating layers of lava, ash and pumice. Their viscous andesitic "
        "magma traps gas, so eruptions are often explosive and produce pyroclastic flows: avalanches of hot gas "
        "and rock that race downhill at hundreds of kilometres per hour.",
        "Volcanologists monitor restless volcanoes with seismometers, tiltmeters and gas spectrometers. A swarm of "
        "small earthquakes, swelling of the ground and a rising ratio of sulfur dioxide to carbon dioxide in the "
        "gas plume can all warn that magma is moving toward the surface.",
        "Volcanic ash is a hazard to aviation because the glassy particles melt inside jet engines and coat the "
        "turbine blades. After the 2010 eruption of Eyjafjallajokull in Iceland, airspace over much of Europe was "
        "closed for six days, stranding ten million travellers.",
    ],
    "bees": [
        "A honeybee colony contains one queen, tens of thousands of female workers and, in summer, a few hundred "
        "male drones. The queen lays up to two thousand eggs a day, while workers change jobs as they age: "
        "cleaning cells, nursing larvae, building comb, guarding the entrance and finally foraging.",
        "Foragers tell their sisters where flowers are with the waggle dance. The angle of the waggle run relative "
        "to vertical gives the direction of the food relative to the sun, and the duration of the run encodes the "
        "distance, about one second for every kilometre.",
        "Bees make honey by evaporating nectar. Workers fan their wings over open cells until the water content "
        "falls below eighteen percent, then cap the cells with wax. A colony may store twenty-five kilograms of "
        "honey to survive the winter, when the bees cluster and shiver to keep the queen warm.",
        "The varroa mite, Varroa destructor, is the most serious pest of honeybees worldwide. It feeds on the fat "
        "bodies of larvae and adult bees and spreads deformed wing virus. Beekeepers count mites with a sugar roll "
        "test and treat colonies with oxalic acid in winter when no brood is present.",
    ],
    "railway": [
        "The Northern Valley Railway opened in 1869 to carry slate from the quarries at Bryn Du down to the harbour. "
        "Its track gauge of only two feet allowed tight curves along the narrow valley, and the first trains were "
        "pulled by horses on the climb and ran down by gravity with brakemen riding the wagons.",
        "Steam locomotives arrived in 1873. The most famous, an engine named Countess built by the Hunslet works, "
        "worked the line for ninety years. Fire-tube boilers and a tank on each side of the boiler gave these small "
        "engines their squat, powerful shape.",
        "Passenger services began in 1881 and carried quarrymen, schoolchildren and, later, tourists. The timetable "
        "of 1905 shows six trains each way on weekdays, and the journey of thirteen miles took one hour and ten "
        "minutes including a stop to take water at the halfway tank.",
        "The quarries closed in 1946 and the railway shut soon after. Volunteers of a preservation society rebuilt "
        "the track from 1954, reopening the line in stages; today heritage trains run from Easter to October and "
        "the society's workshop overhauls boilers under certificate number NVR-1869.",
    ],
    "glacier": [
        "A glacier forms where more snow falls each winter than melts each summer. Over decades the snow is buried "
        "and compressed into firn and then into dense blue ice. Once the ice is about fifty metres thick it begins "
        "to flow downhill under its own weight.",
        "Glaciers move by internal deformation of the ice crystals and by sliding over a film of meltwater at their "
        "base. Surging glaciers can suddenly speed up to a hundred times their normal rate for months before "
        "returning to a slow crawl.",
        "Moving ice carves the landscape into U-shaped valleys, hanging valleys with waterfalls, sharp ridges called "
        "aretes and armchair-shaped hollows called cirques. Boulders carried far from their source and dropped when "
        "the ice melts are called erratics.",
        "Most mountain glaciers are retreating as the climate warms. Scientists measure mass balance by drilling "
        "stakes into the ice and recording how much surface is lost each summer; the reference glacier WGMS-0491 has "
        "lost over thirty metres of ice thickness since 1980.",
    ],
    "chess": [
        "Chess is played on a board of sixty-four squares by two players who each command sixteen pieces. The aim "
        "is checkmate: attacking the opposing king so that it cannot escape capture. A game can also end in a draw "
        "by stalemate, by agreement or by repetition of the same position three times.",
        "Opening principles advise controlling the centre with pawns, developing knights before bishops, castling "
        "early to protect the king and not moving the same piece twice without reason. The Sicilian Defence, "
        "answering 1.e4 with 1...c5, is the most popular reply to the king's pawn opening.",
        "In the endgame the king becomes an active piece. Key ideas include opposition, where the kings face each "
        "other with one square between them, and the rule of the square, which tells whether a king can catch a "
        "passed pawn racing to promote.",
        "Tournament games use a chess clock so each player has a fixed time budget. Ratings are calculated with the "
        "Elo system, named after the physicist Arpad Elo: a player rated four hundred points higher is expected to "
        "score about ninety-one percent against the weaker opponent.",
    ],
    "compost": [
        "Composting turns kitchen scraps and garden waste into humus through the work of bacteria, fungi and "
        "worms. A good heap mixes green materials rich in nitrogen, such as grass clippings and vegetable peelings, "
        "with brown materials rich in carbon, such as dry leaves, straw and cardboard.",
        "The ideal carbon to nitrogen ratio is about thirty to one. Too much green material makes a wet, smelly "
        "heap, while too much brown material slows decomposition to a crawl. The heap should be as moist as a "
        "wrung-out sponge.",
        "Turning the heap every week or two lets air in and keeps the aerobic microbes working. A hot heap reaches "
        "sixty degrees Celsius in its centre, hot enough to kill most weed seeds and pathogens, and finished "
        "compost can be ready in two to three months.",
        "Worm composting, or vermicomposting, uses red wiggler worms, Eisenia fetida, in a ventilated bin. The worms "
        "eat half their weight in scraps each day and produce castings that gardeners value as a rich fertiliser "
        "for seedlings and house plants.",
    ],
}

# (query, {document: grade})
QUERIES: list[tuple[str, dict[str, int]]] = [
    ("How was the lighthouse lens turned?", {"lighthouse": 2}),
    ("Which keeper kept the light alone during an illness?", {"lighthouse": 2}),
    ("lantern code LX-44", {"lighthouse": 2}),
    ("Where can you see puffins nesting?", {"lighthouse": 2}),
    ("How fast should a healthy starter rise after feeding?", {"sourdough": 2}),
    ("What does hydration percentage mean for dough?", {"sourdough": 2}),
    ("Why bake bread in a covered pot?", {"sourdough": 2}),
    ("What makes some volcanic eruptions explosive?", {"volcano": 2}),
    ("How do scientists predict an eruption?", {"volcano": 2, "glacier": 1}),
    ("Why did flights stop over Europe in 2010?", {"volcano": 2}),
    ("How do bees communicate the location of flowers?", {"bees": 2}),
    ("How is nectar turned into honey?", {"bees": 2}),
    ("treating varroa mites with oxalic acid", {"bees": 2}),
    ("Why was the railway built with a narrow gauge?", {"railway": 2}),
    ("How long did the train journey take in 1905?", {"railway": 2}),
    ("boiler certificate NVR-1869", {"railway": 2}),
    ("Who rebuilt the line after it closed?", {"railway": 2}),
    ("How does snow become glacier ice?", {"glacier": 2}),
    ("What is a glacier surge?", {"glacier": 2}),
    ("What landforms do glaciers leave behind?", {"glacier": 2}),
    ("How much ice has reference glacier WGMS-0491 lost?", {"glacier": 2}),
    ("What is the rule of the square in an endgame?", {"chess": 2}),
    ("How are chess ratings calculated?", {"chess": 2}),
    ("What is the right balance of greens and browns in compost?", {"compost": 2}),
    ("How hot does a compost heap get?", {"compost": 2}),
    ("Which worms are used for vermicomposting?", {"compost": 2, "bees": 0}),
]


def document(name: str) -> str:
    """The text stored for a document: the notice, then its paragraphs, separated by blank lines."""
    return "\n\n".join([PREAMBLE, *DOCS[name]])
