"""The PostgreSQL database backend of every process: django-prometheus's, with a health check that sends no query."""
