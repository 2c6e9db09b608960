"""Task meeting_invite: turn a chat message asking to set something up into a calendar entry.

    schemabuild train meeting_invite
"""

from typing import Literal, Optional

from pydantic import BaseModel, Field

from schemabuild import Example, FieldEval, Task

Kind = Literal["meeting", "call", "lunch", "interview"]


class Guest(BaseModel):
    """One person to invite."""

    name: str = Field(description="The person's name as written in the message.")
    team: Optional[str] = Field(description="Their team or company as written ('Priya from design' -> 'design'), "
                                            "or null when the message does not say.")


class Invite(BaseModel):
    """The calendar entry a message asks for."""

    kind: Kind = Field(description="meeting, call (phone or video call), lunch (a meal together) or interview.")
    online: bool = Field(description="True when it happens over video or phone (remote), false when in person.")
    minutes: int = Field(description="How long it lasts, in minutes ('an hour' -> 60, 'half an hour' -> 30).")
    place: Optional[str] = Field(description="The room or venue as written, or null when none is named.")
    guests: list[Guest] = Field(description="Everyone to invite besides the writer, in the order they are named.")


INSTRUCTIONS = """Read a chat message that asks to set up a meeting, call, lunch or interview, and fill in the calendar entry.
kind: meeting, call (a phone or video call), lunch (a meal together) or interview.
online: true when it happens over video or phone, false when people meet in person.
minutes: the length in minutes ("an hour" is 60, "half an hour" is 30).
place: the room or venue as written, or null when none is named.
guests: everyone to invite besides the writer, in order, each with their name as written and their team or company
as written (null when not said).
Answer with JSON only."""


def _length_and_guests(text: str, out: Invite) -> None:
    if out.minutes <= 0:
        raise ValueError("minutes must be positive")
    if not out.guests:
        raise ValueError("an invite needs at least one guest")


def G(name: str, team: Optional[str] = None) -> Guest:
    return Guest(name=name, team=team)


def E(text: str, kind: str, online: bool, minutes: int, place: Optional[str], guests: list[Guest]) -> Example:
    return Example(text, Invite(kind=kind, online=online, minutes=minutes, place=place, guests=guests))


task = Task(
    name="meeting_invite",
    instructions=INSTRUCTIONS,
    output=Invite,
    examples=[
        E("can you set up a 30 minute meeting with Dana and Luis in room 4B", "meeting", False, 30, "room 4B",
          [G("Dana"), G("Luis")]),
        E("Book a video call with Hannah from Acme for 45 minutes please", "call", True, 45, None,
          [G("Hannah", "Acme")]),
        E("lunch with Marco tomorrow at Rosie's Diner, an hour should do", "lunch", False, 60, "Rosie's Diner",
          [G("Marco")]),
        E("Need to interview a candidate, Wei Chen, over zoom. 60 min. Add Omar from recruiting too", "interview",
          True, 60, None, [G("Wei Chen"), G("Omar", "recruiting")]),
        E("quick phone call with Sam, 15 min", "call", True, 15, None, [G("Sam")]),
        E("Please schedule a 90 minute planning meeting in the Blue Room with Aisha from finance, Tom from sales "
          "and Jo", "meeting", False, 90, "the Blue Room", [G("Aisha", "finance"), G("Tom", "sales"), G("Jo")]),
        E("hi! could we do an in-person interview with Lena Park next week? half an hour, 3rd floor lounge",
          "interview", False, 30, "3rd floor lounge", [G("Lena Park")]),
        E("set up a remote meeting w/ Raj (Globex) and Nina (Initech) for 20 minutes", "meeting", True, 20, None,
          [G("Raj", "Globex"), G("Nina", "Initech")]),
    ],
    hints={
        "personas": ["a busy team lead", "an office manager", "a recruiter", "a new hire"],
        "styles": ["terse", "chatty", "polite", "with typos"],
    },
    validators=[_length_and_guests],
    fields={"guests": FieldEval(ordered=True)},
)
