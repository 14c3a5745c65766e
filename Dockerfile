FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DJANGO_ENV=production
WORKDIR /app
# The production packages only, one by one: the development tools (devtools/), tests and
# benchmarks stay out (.dockerignore too; tests/test_production_package.py).
COPY pyproject.toml ./
COPY config ./config
COPY conversations ./conversations
COPY billing ./billing
COPY models_catalog ./models_catalog
COPY idempotency ./idempotency
COPY openai_api ./openai_api
COPY manage.py ./
RUN pip install --no-cache-dir . \
    && SECRET_KEY=build-only-placeholder-secret-key-not-used-at-runtime ALLOWED_HOSTS=build \
       python manage.py collectstatic --noinput
RUN useradd --create-home app
USER app
EXPOSE 8000
# config.web_server execs uvicorn with forwarding headers trusted only as TRUSTED_PROXY_COUNT
# and FORWARDED_ALLOW_IPS say (uvicorn alone would believe them from 127.0.0.1).
CMD ["python", "-m", "config.web_server", "--host", "0.0.0.0", "--port", "8000"]
