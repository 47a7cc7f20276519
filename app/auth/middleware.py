from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from app.auth.service import authenticate


class BearerTokenMiddleware(AbstractAuthenticationMiddleware):
    """Every /api route but the health check needs `Authorization: Bearer <token>`."""

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        sent = connection.headers.getall("authorization", [])
        if len(sent) > 1:  # a proxy in front may have checked another one than this would read
            raise NotAuthorizedException(detail="Send one Authorization header")
        scheme, _, token = (sent[0] if sent else "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthorizedException(detail="Missing bearer token")
        state = connection.app.state
        principal = await authenticate(state.clickhouse, state.known_tokens, state.operator_token, token.strip())
        if principal is None:
            raise NotAuthorizedException(detail="Unknown token")
        return AuthenticationResult(user=principal, auth=None)
