# Builds the `isthmus` binary and ships it with the pipelines and the shipped models.
FROM rust:1.95-bookworm AS build
# rdkafka builds librdkafka from source (cmake) with SSL, SASL, zlib and zstd.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev libssl-dev libsasl2-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin isthmus

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libcurl4 libssl3 libsasl2-2 zlib1g \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/isthmus /usr/local/bin/isthmus
COPY pipelines /pipelines
COPY models /models
WORKDIR /
ENTRYPOINT ["isthmus"]
CMD ["run", "/pipelines/demo/edge.toml", "/pipelines/demo/cloud.toml"]
