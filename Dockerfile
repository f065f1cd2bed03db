# Builds the `isthmus` binary and ships it with the pipelines.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin isthmus

FROM debian:bookworm-slim
COPY --from=build /src/target/release/isthmus /usr/local/bin/isthmus
COPY pipelines /pipelines
WORKDIR /
ENTRYPOINT ["isthmus"]
CMD ["run", "/pipelines/edge.toml", "/pipelines/cloud.toml"]
