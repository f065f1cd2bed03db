//! The one list of every component type: adding a source, transform or sink is one file
//! in `connectors/` or `operators/` plus one line here.

use isthmus_connectors as c;
use isthmus_engine::Registry;
use isthmus_operators as o;

/// Every component type Isthmus knows, by kind and `type` name.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.source::<c::simulator::SimulatorSource>("simulator", c::simulator::EXAMPLE)
        .source::<c::csv_source::CsvSource>("csv", c::csv_source::EXAMPLE)
        .source::<c::jsonl_source::JsonlSource>("jsonl", c::jsonl_source::EXAMPLE)
        .source::<c::channel::ChannelSource>("channel", c::channel::SOURCE_EXAMPLE)
        .source::<c::kafka::source::KafkaSource>("kafka", c::kafka::source::EXAMPLE)
        .source::<c::mqtt::MqttSource>("mqtt", c::mqtt::EXAMPLE)
        .source::<c::policy_acks::PolicyAcksSource>("policy_acks", c::policy_acks::EXAMPLE)
        .transform::<o::filter::Filter>("filter", o::filter::EXAMPLE)
        .transform::<o::map::Map>("map", o::map::EXAMPLE)
        .transform::<o::window::Window>("window", o::window::EXAMPLE)
        .transform::<o::detect::Detect>("detect", o::detect::EXAMPLE)
        .transform::<o::infer::Infer>("infer", o::infer::EXAMPLE)
        .transform::<o::fleet::Fleet>("fleet", o::fleet::EXAMPLE)
        .transform::<o::policy_rules::PolicyRules>("policy", o::policy_rules::EXAMPLE)
        .sink::<c::stdout::StdoutSink>("stdout", c::stdout::EXAMPLE)
        .sink::<c::file_sink::JsonlSink>("jsonl", c::file_sink::JSONL_EXAMPLE)
        .sink::<c::file_sink::CsvSink>("csv", c::file_sink::CSV_EXAMPLE)
        .sink::<c::channel::ChannelSink>("channel", c::channel::SINK_EXAMPLE)
        .sink::<c::null::NullSink>("null", c::null::EXAMPLE)
        .sink::<c::kafka::sink::KafkaSink>("kafka", c::kafka::sink::EXAMPLE)
        .sink::<c::reconfigure::ReconfigureSink>("reconfigure", c::reconfigure::EXAMPLE);
    r
}
