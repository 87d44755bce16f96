// Package deploy holds the compose stack's configuration files (docker-compose.yml at the root of
// the repository runs them): APISIX's config.yaml, Prometheus' scrape configuration, and Grafana's
// provisioning and its graylane dashboard. It has no code. Its tests check that the files parse,
// that every query of the dashboard names only metrics and labels graylane exports and returns
// series from them in a real Prometheus, and that the files agree with docker-compose.yml on
// addresses, ports and mounted paths.
package deploy
