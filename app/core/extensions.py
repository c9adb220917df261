"""Extensions created at module level and bound to the app with ``init_app`` (style guide: Service)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import CursorResult, MetaData, Result
from sqlalchemy.orm import DeclarativeBase

# stable constraint names, so Alembic migrations (and batch mode on SQLite) can address them
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)
if TYPE_CHECKING:
    Model = Base  # db.Model is built at run time on Base; the type checker sees Base
else:
    Model = db.Model


def rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE run through the session matched (``Session.execute`` is typed as returning a
    ``Result``; for those statements it is a ``CursorResult``)."""
    return cast(CursorResult[Any], result).rowcount


def end_read() -> None:
    """End a request's read-only transaction with a COMMIT. The session's close at the end of the request
    would roll it back, and a ROLLBACK makes psycopg forget the statements it prepared on that connection, so
    the hot reads would be parsed and planned again every time (psycopg prepares a statement on its fifth
    use on a connection)."""
    if db.session().in_transaction():
        db.session.commit()


csrf = CSRFProtect()  # bound by app.create_app; the JSON API blueprints are exempt
