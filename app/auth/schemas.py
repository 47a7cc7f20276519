from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec

Role = Literal["viewer", "member", "admin"]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Email = Annotated[str, msgspec.Meta(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]


class WorkspaceCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name


class Workspace(msgspec.Struct):
    id: UUID
    name: str
    created_at: datetime


class UserCreate(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    name: Name | None = None


class User(msgspec.Struct):
    id: UUID
    email: str
    name: str | None


class MembershipPut(msgspec.Struct, forbid_unknown_fields=True):
    role: Role


class Membership(msgspec.Struct):
    workspace_id: UUID
    user_id: UUID
    role: Role


class WorkspaceTokenCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name | None = None


class TokenCreated(msgspec.Struct):
    token: str
