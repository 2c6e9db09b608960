"""Task tool_picker: Billy, a Discord bot, picks the tool a chat message calls for.

    schemabuild train tool_picker
"""

from typing import Literal, Optional

from pydantic import BaseModel, Field

from schemabuild import Example, FieldEval, Task

Tool = Literal[
    "discord_post.youtube",
    "discord_post.gif",
    "discord_post.image",
    "weather.forecast",
    "timer.set",
    "music.play",
    "web.search",
    "no_tool",
]


class ToolPick(BaseModel):
    """The tool Billy should call and its query."""

    tool: Tool = Field(description="The one tool the message calls for, or no_tool.")
    query: Optional[str] = Field(
        description="The tool's argument, copied from the message where possible; null for no_tool."
    )


INSTRUCTIONS = """You are Billy, a Discord bot. Read the chat message and pick the one tool it calls for.
Tools: discord_post.youtube (post a YouTube video; query = what the video shows or what to search),
discord_post.gif (post a GIF; query = what the GIF shows), discord_post.image (post a picture; query = what it shows),
weather.forecast (query = the place), timer.set (query = the duration as the user said it),
music.play (query = the song, artist or style), web.search (query = what to look up),
no_tool (chit-chat, games, thanks, maths you can answer yourself; query = null).
Answer with JSON only: {"tool": ..., "query": ...}."""


def _no_tool_has_no_query(text: str, out: ToolPick) -> None:
    if out.tool == "no_tool" and out.query is not None:
        raise ValueError("no_tool must have query null")
    if out.tool != "no_tool" and not out.query:
        raise ValueError(f"{out.tool} needs a query")


def E(text: str, tool: str, query: Optional[str] = None) -> Example:
    return Example(text, ToolPick(tool=tool, query=query))


task = Task(
    name="tool_picker",
    instructions=INSTRUCTIONS,
    output=ToolPick,
    examples=[
        # discord_post.youtube
        E("billy show us a youtube video of cats falling off tables", "discord_post.youtube", "cats falling off tables"),
        E("can you find a yt video about how to bake sourdough bread", "discord_post.youtube", "how to bake sourdough bread"),
        E("post the youtube clip of the moon landing pls", "discord_post.youtube", "the moon landing"),
        E("Billy, youtube video of lofi hip hop study session", "discord_post.youtube", "lofi hip hop study session"),
        E("drop a video on youtube showing skateboard tricks", "discord_post.youtube", "skateboard tricks"),
        E("yo billy link a youtube vid of minecraft speedruns", "discord_post.youtube", "minecraft speedruns"),
        # discord_post.gif
        E("billy gif of a dancing cat", "discord_post.gif", "a dancing cat"),
        E("send a gif of someone facepalming", "discord_post.gif", "someone facepalming"),
        E("need a reaction gif of a shocked pikachu lol", "discord_post.gif", "a shocked pikachu"),
        E("Billy post a gif of fireworks", "discord_post.gif", "fireworks"),
        E("gimme a gif of a dog on a skateboard", "discord_post.gif", "a dog on a skateboard"),
        E("can we get a celebration gif of people cheering", "discord_post.gif", "people cheering"),
        # discord_post.image
        E("billy show me a picture of the eiffel tower at night", "discord_post.image", "the eiffel tower at night"),
        E("post an image of a red panda", "discord_post.image", "a red panda"),
        E("can you share a photo of northern lights", "discord_post.image", "northern lights"),
        E("Billy pic of a cozy cabin in the snow please", "discord_post.image", "a cozy cabin in the snow"),
        E("send a picture of a golden retriever puppy", "discord_post.image", "a golden retriever puppy"),
        E("show an image of the mars rover", "discord_post.image", "the mars rover"),
        # weather.forecast
        E("billy what's the weather in Paris tomorrow", "weather.forecast", "Paris"),
        E("is it going to rain in Seattle today?", "weather.forecast", "Seattle"),
        E("weather forecast for Tokyo", "weather.forecast", "Tokyo"),
        E("Billy how cold is it in Oslo right now", "weather.forecast", "Oslo"),
        E("do I need an umbrella in London this weekend", "weather.forecast", "London"),
        E("what's the forecast looking like for Buenos Aires", "weather.forecast", "Buenos Aires"),
        # timer.set
        E("billy set a timer for 10 minutes", "timer.set", "10 minutes"),
        E("timer 25 min for my pomodoro", "timer.set", "25 min"),
        E("remind me in 2 hours to check the oven", "timer.set", "2 hours"),
        E("Billy start a 30 second countdown", "timer.set", "30 second"),
        E("set a timer for an hour and a half", "timer.set", "an hour and a half"),
        E("can you time 5 minutes for the tea", "timer.set", "5 minutes"),
        # music.play
        E("billy play some Daft Punk", "music.play", "Daft Punk"),
        E("play bohemian rhapsody by queen", "music.play", "bohemian rhapsody by queen"),
        E("put on some chill jazz in the voice channel", "music.play", "chill jazz"),
        E("Billy queue up Blinding Lights", "music.play", "Blinding Lights"),
        E("can you play lo-fi beats for studying", "music.play", "lo-fi beats for studying"),
        E("music please, something by Taylor Swift", "music.play", "Taylor Swift"),
        # web.search
        E("billy look up who won the world cup in 2010", "web.search", "who won the world cup in 2010"),
        E("search the web for cheap flights to Rome", "web.search", "cheap flights to Rome"),
        E("google how tall mount everest is", "web.search", "how tall mount everest is"),
        E("Billy find out when the next solar eclipse is", "web.search", "when the next solar eclipse is"),
        E("can you search for the best budget gaming mouse", "web.search", "the best budget gaming mouse"),
        E("look up the release date of the new zelda game", "web.search", "the release date of the new zelda game"),
        # no_tool
        E("thanks billy you're the best", "no_tool"),
        E("hey billy how are you doing today", "no_tool"),
        E("what's 12 times 7", "no_tool"),
        E("let's play rock paper scissors, I pick rock", "no_tool"),
        E("good night everyone", "no_tool"),
        E("lol that's hilarious", "no_tool"),
    ],
    hints={
        "personas": ["a gamer in a late-night voice chat", "a student studying for exams", "a moderator keeping order",
                     "a newcomer to the server", "someone who types in all lowercase with typos"],
        "styles": ["terse", "chatty", "polite", "slangy", "with emoji"],
        "topics": ["games", "music", "pets", "travel", "cooking", "sports", "science", "movies"],
    },
    validators=[_no_tool_has_no_query],
    fields={"query": FieldEval(comparator="string")},
)
