FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DJANGO_ENV=production
WORKDIR /app
COPY pyproject.toml ./
COPY config ./config
COPY conversations ./conversations
COPY billing ./billing
COPY models_catalog ./models_catalog
COPY manage.py ./
RUN pip install --no-cache-dir . \
    && SECRET_KEY=build-only-placeholder-secret-key-not-used-at-runtime ALLOWED_HOSTS=build \
       python manage.py collectstatic --noinput
RUN useradd --create-home app
USER app
EXPOSE 8000
CMD ["python", "-m", "uvicorn", "config.asgi:application", "--host", "0.0.0.0", "--port", "8000"]
