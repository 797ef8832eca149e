create table migrate_greetings (
    id bigint generated always as identity primary key,
    message text not null
);
