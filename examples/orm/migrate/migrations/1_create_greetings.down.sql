drop table migrate_greetings;
