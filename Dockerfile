# flow in two stages: a Rust build stage, and a small runtime with bash and python3 for the
# bash and python operators (and util-linux's setpriv, which ties a task to its worker).
#
#   docker build -t flow .
#   docker compose up -d        (see docker-compose.yaml and README "Run it as a cluster")

FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka and SQLite are built from source by their crates; perl and make come with the
# image, cmake is not needed.
COPY . .
RUN cargo build --release --locked --bin flow \
 && strip target/release/flow

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends bash python3 util-linux ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 50000 --shell /bin/bash flow
COPY --from=build /src/target/release/flow /usr/local/bin/flow
USER flow
WORKDIR /home/flow
ENV FLOW_HOME=/home/flow/.flow \
    FLOW__CORE__DAGS_FOLDER=/opt/flow/dags
EXPOSE 8080
ENTRYPOINT ["flow"]
CMD ["--help"]
