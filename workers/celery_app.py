"""Entry point for ``celery -A workers.celery_app worker``: the Flask app's Celery instance."""

from app import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
