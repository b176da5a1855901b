# One image, one binary: `switchyard` (all | gateway | api | token).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p switchyard && strip target/release/switchyard

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /data switchyard && mkdir -p /data && chown switchyard /data
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
USER switchyard
WORKDIR /data
ENV SWITCHYARD_LISTEN=0.0.0.0:8080 DATABASE_URL=sqlite:///data/switchyard.db
EXPOSE 8080
# /readyz is on the admin listener when SWITCHYARD_ADMIN_LISTEN is set, else on the public one.
HEALTHCHECK --interval=5s --timeout=2s --retries=3 CMD curl -fsS "http://${SWITCHYARD_ADMIN_LISTEN:-127.0.0.1:8080}/readyz" || exit 1
ENTRYPOINT ["switchyard"]
CMD ["all"]
