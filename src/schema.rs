//! The JSON Schema of the mapping language, derived from the model.

use crate::config::model::{MappingFile, ProjectFile, SourceFile, TargetFile, TestFile};
use schemars::JsonSchema;

/// Any file of a mapping folder; told apart by the first key.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code, clippy::large_enum_variant)]
enum MappingFolderFile {
    Mappings(MappingFile),
    Tests(TestFile),
    Source(SourceFile),
    Target(TargetFile),
    Project(ProjectFile),
}

/// The schema as pretty JSON (draft-07, what yaml-language-server validates), ending in a newline.
pub fn schema_json() -> String {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<MappingFolderFile>();
    schema.insert("title".into(), "mapper mapping folder file".into());
    schema.insert(
        "description".into(),
        "A file of a mapper mapping folder: mappings, tests, a source or target profile, or mapper.yaml. See README's mapping reference.".into(),
    );
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
